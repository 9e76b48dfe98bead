//! Recovery of missed messages: a socket joins with `{"since": P}` after `--missed`
//! publications and must receive each of them exactly once, in order, with its position.

use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Instant;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::publish::publish_counted;
use super::{Backend, QUIET, RECOVERY_TIMEOUT};
use crate::{encode_text, is_broadcast, median, next_frame, open, Target};

/// The medians of one backend's recoveries (the right ones only) and every sample.
pub(super) fn recovery_summary(backend: Backend, missed: u64, samples: Vec<Value>) -> Value {
    let good: Vec<&Value> = samples
        .iter()
        .filter(|s| s["problems"].as_array().is_some_and(Vec::is_empty))
        .collect();
    let of = |key: &str| {
        good.iter()
            .filter_map(|s| s[key].as_f64())
            .collect::<Vec<_>>()
    };
    let last = of("last_ms");
    json!({
        "backend": backend.name(),
        "missed": missed,
        "samples": samples.len(),
        "good": good.len(),
        "last_ms_median": median(last.clone()),
        "last_ms_min": last.iter().copied().reduce(f64::min),
        "last_ms_max": last.iter().copied().reduce(f64::max),
        "reply_ms_median": median(of("reply_ms")),
        "messages_per_s_median": median(of("messages_per_s")),
        "runs": samples,
    })
}

/// A WebSocket connection read frame by frame, remembering when each read returned.
struct Conn {
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
    buf: Vec<u8>,
    /// Where the unread frames in `buf` start.
    pos: usize,
    /// When the last read returned.
    at: Instant,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Self, String> {
        let (read, write, buf) = open(addr, Ipv4Addr::LOCALHOST).await?;
        Ok(Self {
            read,
            write,
            buf,
            pos: 0,
            at: Instant::now(),
        })
    }

    async fn send(&mut self, text: &str) -> Result<(), String> {
        let mut frame = Vec::with_capacity(text.len() + 14);
        encode_text(&mut frame, text.as_bytes());
        self.write
            .write_all(&frame)
            .await
            .map_err(|e| format!("write: {e}"))
    }

    /// The next text frame and when the read that completed it returned; `None` at
    /// `deadline`.
    async fn next_text(&mut self, deadline: Instant) -> Result<Option<(Vec<u8>, Instant)>, String> {
        loop {
            if let Some((opcode, start, end)) = next_frame(&self.buf[self.pos..]) {
                let payload = self.buf[self.pos + start..self.pos + end].to_vec();
                self.pos += end;
                match opcode {
                    0x1 => return Ok(Some((payload, self.at))),
                    0x8 => {
                        let code = payload
                            .get(..2)
                            .map_or(0, |c| u16::from_be_bytes([c[0], c[1]]));
                        return Err(format!("closed by the node ({code})"));
                    }
                    _ => continue,
                }
            }
            // Unread bytes move to the front once per read, not once per frame.
            self.buf.drain(..self.pos);
            self.pos = 0;
            let have = self.buf.len();
            self.buf.resize(have + 64 * 1024, 0);
            let read =
                tokio::time::timeout_at(deadline.into(), self.read.read(&mut self.buf[have..]));
            let outcome = read.await;
            self.at = Instant::now();
            match outcome {
                Err(_) => {
                    self.buf.truncate(have);
                    return Ok(None);
                }
                Ok(Ok(0)) => return Err("end of stream".into()),
                Ok(Ok(n)) => self.buf.truncate(have + n),
                Ok(Err(e)) => return Err(format!("read: {e}")),
            }
        }
    }

    /// Reads up to the reply with ref `reference`: its payload and when it arrived. Anything
    /// else before it is an error.
    async fn reply(
        &mut self,
        reference: &str,
        deadline: Instant,
    ) -> Result<(Value, Instant), String> {
        let (text, at) = self
            .next_text(deadline)
            .await?
            .ok_or_else(|| format!("no reply to ref {reference}"))?;
        let frame: Value = serde_json::from_slice(&text)
            .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&text)))?;
        if frame[1] != reference || frame[3] != "phx_reply" {
            return Err(format!(
                "expected the reply to ref {reference}, got {frame}"
            ));
        }
        Ok((frame[4].clone(), at))
    }
}

/// `"<offset>:<epoch>"` split.
fn split_position(position: &str) -> Option<(u64, &str)> {
    let (offset, epoch) = position.split_once(':')?;
    Some((offset.parse().ok()?, epoch))
}

/// One recovery of `missed` messages on `topic`, published on the first node and recovered
/// on the last: its figures and problems (none when it is right).
pub(super) async fn recover_once(target: &Target, topic: &str, missed: u64) -> Value {
    let mut problems: Vec<String> = Vec::new();
    let mut out = json!({ "topic": topic, "missed": missed });
    let publish_to = target.addrs[0];
    let recover_on = *target.addrs.last().unwrap_or(&publish_to);
    let outcome = recover_inner(
        publish_to,
        recover_on,
        topic,
        missed,
        &mut out,
        &mut problems,
    )
    .await;
    if let Err(e) = outcome {
        problems.push(e);
    }
    out["problems"] = json!(problems);
    out
}

async fn recover_inner(
    publish_to: SocketAddr,
    recover_on: SocketAddr,
    topic: &str,
    missed: u64,
    out: &mut Value,
    problems: &mut Vec<String>,
) -> Result<(), String> {
    let deadline = Instant::now() + RECOVERY_TIMEOUT;
    let mut conn = Conn::open(recover_on).await?;
    conn.send(&format!(r#"["1","1","{topic}","phx_join",{{}}]"#))
        .await?;
    let (reply, _) = conn.reply("1", deadline).await?;
    let since = reply["response"]["position"]
        .as_str()
        .ok_or_else(|| format!("first join: no position in {reply}"))?
        .to_owned();
    let (since_offset, epoch) =
        split_position(&since).ok_or_else(|| format!("position {since}"))?;
    let epoch = epoch.to_owned();
    conn.send(&format!(r#"["1","2","{topic}","phx_leave",{{}}]"#))
        .await?;
    let (left, _) = conn.reply("2", deadline).await?;
    if left["status"] != "ok" {
        return Err(format!("leave: {left}"));
    }

    let topic_owned = topic.to_owned();
    let published =
        publish_counted(publish_to, missed, 1, Rc::new(move |_| topic_owned.clone())).await?;
    out["publish_seconds"] = json!(published);

    // The measured part: from writing the join to reading the last missed message.
    let join = format!(r#"["3","3","{topic}","phx_join",{{"since":"{since}"}}]"#);
    let started = Instant::now();
    conn.send(&join).await?;
    let mut reply_at = None;
    let mut reply = Value::Null;
    let mut broadcasts: Vec<Vec<u8>> = Vec::with_capacity(missed as usize);
    let mut last_at = None;
    while (broadcasts.len() as u64) < missed || reply_at.is_none() {
        let Some((text, at)) = conn.next_text(deadline).await? else {
            break;
        };
        if is_broadcast(&text) {
            if reply_at.is_none() && broadcasts.is_empty() {
                problems.push("a broadcast before the join's reply".into());
            }
            broadcasts.push(text);
            if broadcasts.len() as u64 == missed {
                last_at = Some(at);
            }
        } else {
            let frame: Value = serde_json::from_slice(&text).unwrap_or(Value::Null);
            if frame[1] == "3" && frame[3] == "phx_reply" {
                reply_at = Some(at);
                reply = frame[4].clone();
            } else if frame[0] == "1" && frame[3] == "phx_close" {
                // The end of the first join, after the leave's reply.
            } else {
                problems.push(format!(
                    "unexpected frame {}",
                    String::from_utf8_lossy(&text)
                ));
            }
        }
    }
    let ms = |at: Option<Instant>| at.map(|at| at.duration_since(started).as_secs_f64() * 1e3);
    out["since"] = json!(since);
    out["reply"] = reply.clone();
    out["reply_ms"] = json!(ms(reply_at));
    out["last_ms"] = json!(ms(last_at));
    out["messages_per_s"] = json!(ms(last_at).map(|ms| missed as f64 / (ms / 1e3)));
    out["received"] = json!(broadcasts.len());

    // Nothing more may follow (a duplicate, a message from nowhere).
    let quiet_until = Instant::now() + QUIET;
    let mut extra = 0;
    while let Some((text, _)) = conn.next_text(quiet_until).await? {
        if is_broadcast(&text) {
            extra += 1;
        }
    }
    out["extra"] = json!(extra);
    if extra > 0 {
        problems.push(format!("{extra} broadcasts after the last missed one"));
    }

    // Check the reply and every recovered message.
    if reply["status"] != "ok" || reply["response"]["recovered"] != true {
        problems.push(format!("the join with since was answered {reply}"));
    }
    let expected_position = format!("{}:{epoch}", since_offset + missed);
    if reply["response"]["position"] != expected_position.as_str() {
        problems.push(format!(
            "the reply's position is {}, not {expected_position}",
            reply["response"]["position"]
        ));
    }
    if broadcasts.len() as u64 != missed {
        problems.push(format!(
            "{} of {missed} missed messages arrived",
            broadcasts.len()
        ));
    }
    let mut wrong = 0;
    let mut first_wrong = None;
    for (i, text) in broadcasts.iter().enumerate() {
        let frame: Value = serde_json::from_slice(text).unwrap_or(Value::Null);
        let want_position = format!("{}:{epoch}", since_offset + i as u64 + 1);
        let want_seq = format!("{i:06}");
        let right = frame[1] == want_position.as_str()
            && frame[2] == topic
            && frame[4]["s"] == want_seq.as_str();
        if !right {
            wrong += 1;
            first_wrong.get_or_insert_with(|| {
                format!(
                    "message {i}: want {want_position} s={want_seq}, got {}",
                    String::from_utf8_lossy(text)
                )
            });
        }
    }
    if let Some(first) = first_wrong {
        problems.push(format!("{wrong} messages out of place; first: {first}"));
    }
    Ok(())
}
