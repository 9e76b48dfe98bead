//! Stream positions: where a publication sits in a topic's history.

use std::fmt;
use std::str::FromStr;

/// The longest epoch accepted, in characters.
pub const MAX_EPOCH_CHARS: usize = 16;

/// A stream's identity: a short alphanumeric string that changes whenever the backend lost
/// the stream (a restart without persistence, an expired history), so an offset of an older
/// stream is never trusted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(String);

/// Why a text is not an [`Epoch`] or a [`Position`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PositionError {
    /// Not `<offset>:<epoch>`.
    #[error("a position is written \"<offset>:<epoch>\", e.g. \"17:k3Jd9\"")]
    Shape,
    /// The offset is not a number from 1.
    #[error("the offset of a position is a number from 1")]
    Offset,
    /// The epoch is empty, too long, or not alphanumeric.
    #[error("the epoch of a position is 1 to {MAX_EPOCH_CHARS} letters and digits")]
    Epoch,
}

impl Epoch {
    /// Validates `text` as an epoch.
    ///
    /// # Errors
    /// [`PositionError::Epoch`] when it is empty, longer than [`MAX_EPOCH_CHARS`], or holds
    /// anything but ASCII letters and digits.
    pub fn new(text: &str) -> Result<Self, PositionError> {
        if text.is_empty()
            || text.len() > MAX_EPOCH_CHARS
            || !text.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(PositionError::Epoch);
        }
        Ok(Self(text.to_owned()))
    }

    /// An epoch made from a number (a random draw, a clock reading), in base 62.
    #[must_use]
    pub fn from_number(mut number: u64) -> Self {
        const DIGITS: &[u8; 62] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let mut digits = Vec::with_capacity(11);
        loop {
            digits.push(char::from(DIGITS[(number % 62) as usize]));
            number /= 62;
            if number == 0 {
                break;
            }
        }
        Self(digits.into_iter().rev().collect())
    }

    /// The epoch's text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A publication's place in its topic's stream: `"<offset>:<epoch>"` on the wire, e.g.
/// `"17:k3Jd9"`. Offsets count up from 1 within an epoch. Never a plain number, so phoenix.js
/// never mistakes one for its heartbeat's ref.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    /// The publication's offset in the stream (from 1).
    pub offset: u64,
    /// The stream's epoch.
    pub epoch: Epoch,
}

impl Position {
    /// The position of offset `offset` in the stream `epoch`.
    #[must_use]
    pub const fn new(offset: u64, epoch: Epoch) -> Self {
        Self { offset, epoch }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.offset, self.epoch)
    }
}

impl FromStr for Position {
    type Err = PositionError;

    /// Parses `"<offset>:<epoch>"`. The offset may be 0 (a stream before its first
    /// publication, as a join's reply says of an empty history).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (offset, epoch) = text.split_once(':').ok_or(PositionError::Shape)?;
        if offset.is_empty() || !offset.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PositionError::Offset);
        }
        let offset = offset.parse().map_err(|_| PositionError::Offset)?;
        Ok(Self {
            offset,
            epoch: Epoch::new(epoch)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_malformed_ones_say_why() {
        let position: Position = "17:k3Jd9".parse().unwrap();
        assert_eq!(position.offset, 17);
        assert_eq!(position.epoch.as_str(), "k3Jd9");
        assert_eq!(position.to_string(), "17:k3Jd9");
        assert_eq!("0:a".parse::<Position>().unwrap().offset, 0);
        assert_eq!("17".parse::<Position>(), Err(PositionError::Shape));
        assert_eq!("x:abc".parse::<Position>(), Err(PositionError::Offset));
        assert_eq!("-1:abc".parse::<Position>(), Err(PositionError::Offset));
        assert_eq!(
            "99999999999999999999999:abc".parse::<Position>(),
            Err(PositionError::Offset)
        );
        assert_eq!("1:".parse::<Position>(), Err(PositionError::Epoch));
        assert_eq!("1:a-b".parse::<Position>(), Err(PositionError::Epoch));
        assert_eq!(
            "1:abcdefghijklmnopq".parse::<Position>(),
            Err(PositionError::Epoch)
        );
    }

    #[test]
    fn epochs_from_numbers_are_short_and_alphanumeric() {
        assert_eq!(Epoch::from_number(0).as_str(), "0");
        assert_eq!(Epoch::from_number(61).as_str(), "Z");
        assert_eq!(Epoch::from_number(62).as_str(), "10");
        let big = Epoch::from_number(u64::MAX);
        assert!(big.as_str().len() <= 11);
        assert!(Epoch::new(big.as_str()).is_ok());
    }
}
