//! History and recovery: positions in a topic's stream, the in-memory history of a topic,
//! and the merge that gives a reconnecting client exactly what it missed, or tells it it
//! cannot.
//!
//! # Layout
//! - [`position`]: [`Position`] (`"<offset>:<epoch>"`) and [`Epoch`].
//! - [`recovery`]: [`recover`](recovery::recover), the pure merge of a history read and the
//!   live publications that arrived during it.
//! - [`ring`]: [`Ring`](ring::Ring), one topic's history in memory.
//! - [`retention`]: [`HistoryRules`], which topics keep history and how much.

pub mod position;
pub mod recovery;
pub mod retention;
pub mod ring;

pub use position::{Epoch, Position, PositionError};
pub use retention::{HistoryRules, Retention};
