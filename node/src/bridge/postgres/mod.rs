//! The PostgreSQL adapter: `LISTEN`/`NOTIFY` on two connections.
//!
//! One connection only `LISTEN`s: it is polled as a stream of notifications, moved into the
//! bridge's bounded [`Inbox`] as they arrive. A batch of subscription changes is one
//! multi-statement `LISTEN "a";LISTEN "b";...` (one implicit transaction, so the backend
//! applies all or none). The other connection publishes with a prepared
//! `SELECT pg_notify($1, $2)`, pipelined in order, each its own transaction (PostgreSQL folds
//! identical notifications sent in one transaction into one), with `synchronous_commit = off`:
//! a notification is never durable, so waiting for the WAL flush would only slow it down (a
//! publication with history is: `switchboard_publish` commits it durably, see [`history`]).
//! PostgreSQL says which backend process sent each notification, so this node recognises its
//! own echo by the publishing connection's process id (except a publication with history,
//! which every node delivers from the backend, its publisher's included).
//!
//! When a namespace keeps history the node installs its [tables and functions](history) on
//! every connect, publishes those topics' messages with `SELECT switchboard_publish(...)` (in
//! the same pipeline, so the order holds) and reads them with `switchboard_history`. When a
//! namespace tracks presence ([`PostgresBackend::with_presence`]) it installs the
//! [presence tables and functions](presence) too, and performs every presence operation as one
//! prepared `SELECT switchboard_presence_*(...)` on the publishing connection. Both installs
//! share `switchboard_channel` ([`CHANNEL_SQL`]) and run as one transaction
//! ([`install_sql`]).
//!
//! # Layout
//! - [`channel`]: topic → channel names (PostgreSQL's 63-byte identifier limit).
//! - [`history`]: the SQL installed for history.
//! - [`presence`]: the SQL installed for presence, its calls and its results.

pub mod channel;
pub mod history;
pub mod presence;

use std::rc::Rc;
use std::sync::Arc;

use futures_util::future::{self, join_all, LocalBoxFuture};
use futures_util::{FutureExt as _, StreamExt as _};
use switchboard_core::bridge::{EdgeOp, RequestError};
use switchboard_core::history::recovery::HistoryRead;
use switchboard_core::history::HistoryRules;
use switchboard_core::Topic;
use tokio::sync::oneshot;
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls, Socket, Statement};
use tracing::debug;

use super::backend::{
    Backend, Connected, Inbox, Outgoing, PresenceOp, PresenceReply, PublishResults, Received,
};
use channel::{channel_name, quote_ident};

/// The largest `pg_notify` payload: PostgreSQL requires it to be shorter than 8000 bytes.
pub const MAX_PAYLOAD_BYTES: usize = 7999;

/// What the bridge publishes with.
const NOTIFY_SQL: &str = "SELECT pg_notify($1, $2)";
/// What the bridge publishes with history with.
const RECORD_SQL: &str = "SELECT switchboard_publish($1, $2::text::jsonb, $3)";
/// What the bridge reads history with.
const HISTORY_SQL: &str = "SELECT switchboard_history($1, $2, $3)::text";

/// The connections of one generation.
pub struct PgLink {
    listener: Client,
    publisher: Client,
    notify: Statement,
    /// `switchboard_publish` and `switchboard_history`, when history is installed.
    history: Option<(Statement, Statement)>,
    /// The `switchboard_presence_*` calls, when presence is installed.
    presence: Option<presence::Statements>,
}

/// The PostgreSQL adapter.
#[derive(Debug, Clone)]
pub struct PostgresBackend {
    config: tokio_postgres::Config,
    prefix: Arc<str>,
    /// The history SQL to install on connect, when a namespace keeps history.
    history: Option<Arc<str>>,
    /// Whether to install presence on connect (a namespace tracks presence).
    presence: bool,
}

/// `switchboard_channel(name)`: [`channel_name`] in SQL, which the history and presence
/// functions use (and applications may too, see docs/postgres.md). Installed whenever either
/// is.
pub const CHANNEL_SQL: &str = r"
CREATE OR REPLACE FUNCTION switchboard_channel(name text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $f$
  SELECT CASE
    WHEN octet_length(name) <= 63 AND name !~ '~[0-9a-f]{32}$' THEN name
    ELSE (SELECT left(name, n) FROM generate_series(30, 0, -1) AS n
          WHERE octet_length(left(name, n)) <= 30 LIMIT 1)
         || '~' || left(encode(sha256(convert_to(name, 'UTF8')), 'hex'), 32)
  END
$f$;
";

/// What the node installs on connect: [`CHANNEL_SQL`], then `history` and `presence` (each
/// when given), as one transaction under an advisory lock so nodes starting together do not
/// collide; `None` when there is neither.
#[must_use]
pub fn install_sql(history: Option<&str>, presence: Option<&str>) -> Option<String> {
    if history.is_none() && presence.is_none() {
        return None;
    }
    let mut sql = String::from("BEGIN;\nSELECT pg_advisory_xact_lock(7469636803);\n");
    sql.push_str(CHANNEL_SQL);
    for part in [history, presence].into_iter().flatten() {
        sql.push_str(part);
    }
    sql.push_str("COMMIT;\n");
    Some(sql)
}

/// Parses a `--database-url`: a `postgres://` / `postgresql://` URL or a `key=value`
/// connection string, as libpq takes them.
///
/// # Errors
/// The text is neither.
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    if config.get_application_name().is_none() {
        config.application_name("switchboard");
    }
    Ok(config)
}

impl PostgresBackend {
    /// An adapter for the database at `url`, with channel = `prefix` + topic (mapped when
    /// longer than 63 bytes, see [`channel`]) and history for the namespaces `rules` name.
    ///
    /// # Errors
    /// The URL is not a valid connection string.
    pub fn new(
        url: &str,
        prefix: &str,
        rules: &HistoryRules,
    ) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            config: parse_url(url)?,
            prefix: prefix.into(),
            history: (!rules.is_empty()).then(|| history::install_sql(prefix, rules).into()),
            presence: false,
        })
    }

    /// The same adapter, installing the [presence tables and functions](presence) on every
    /// connect (call it when a namespace tracks presence).
    #[must_use]
    pub fn with_presence(self) -> Self {
        Self {
            presence: true,
            ..self
        }
    }

    /// What to install on connect, and what it is for (for the error message).
    fn install(&self) -> Option<(String, &'static str)> {
        let presence = self.presence.then(|| presence::install_sql(&self.prefix));
        let sql = install_sql(self.history.as_deref(), presence.as_deref())?;
        let what = match (self.history.is_some(), self.presence) {
            (true, true) => "history and presence",
            (true, false) => "history",
            _ => "presence",
        };
        Some((sql, what))
    }
}

/// A PostgreSQL error as the bridge machine sees it: an error the server reported refuses
/// the request (the connection is fine), anything else means the connection is gone.
fn classify(err: &tokio_postgres::Error) -> RequestError {
    if err.as_db_error().is_some() && !err.is_closed() {
        RequestError::Refused(err.to_string())
    } else {
        RequestError::Failed(err.to_string())
    }
}

/// Drives a connection until it ends, then says why.
fn drive(connection: Connection<Socket, NoTlsStream>) -> oneshot::Receiver<String> {
    let (closed, why) = oneshot::channel();
    actix::spawn(async move {
        let reason = match connection.await {
            Ok(()) => "closed".to_owned(),
            Err(err) => err.to_string(),
        };
        let _ = closed.send(reason);
    });
    why
}

/// Drives the listening connection: polls it as a stream of messages and moves the
/// notifications into `inbox`, marking those the process `own_pid` sent.
fn listen(
    mut connection: Connection<Socket, NoTlsStream>,
    inbox: Inbox,
    own_pid: i32,
) -> oneshot::Receiver<String> {
    let (closed, why) = oneshot::channel();
    actix::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        let reason = loop {
            match messages.next().await {
                Some(Ok(AsyncMessage::Notification(notification))) => {
                    let received = Received {
                        channel: notification.channel().to_owned(),
                        body: notification.payload().as_bytes().to_vec(),
                        from_self: notification.process_id() == own_pid,
                    };
                    if !inbox.offer(received) {
                        return;
                    }
                }
                Some(Ok(AsyncMessage::Notice(notice))) => debug!(%notice, "postgres notice"),
                Some(Ok(_)) => {}
                Some(Err(err)) => break err.to_string(),
                None => break "closed".to_owned(),
            }
        };
        let _ = closed.send(reason);
    });
    why
}

impl Backend for PostgresBackend {
    type Link = Rc<PgLink>;

    fn name(&self) -> &'static str {
        "postgres"
    }

    fn channel(&self, topic: &Topic) -> String {
        channel_name(&self.prefix, topic.as_str())
    }

    fn connect(
        &self,
        inbox: Inbox,
    ) -> LocalBoxFuture<'static, Result<Connected<Rc<PgLink>>, String>> {
        let config = self.config.clone();
        let install = self.install();
        let with_history = self.history.is_some();
        let with_presence = self.presence;
        async move {
            let fail = |err: tokio_postgres::Error| err.to_string();
            let (publisher, connection) = config.connect(NoTls).await.map_err(fail)?;
            let publisher_closed = drive(connection);
            publisher
                .batch_execute("SET synchronous_commit = off")
                .await
                .map_err(fail)?;
            let notify = publisher.prepare(NOTIFY_SQL).await.map_err(fail)?;
            if let Some((sql, what)) = install {
                publisher.batch_execute(&sql).await.map_err(|err| {
                    format!(
                        "cannot install the switchboard {what} tables and functions \
                         (the database user needs CREATE on its schema): {err}"
                    )
                })?;
            }
            let history = if with_history {
                let record = publisher.prepare(RECORD_SQL).await.map_err(fail)?;
                let read = publisher.prepare(HISTORY_SQL).await.map_err(fail)?;
                Some((record, read))
            } else {
                None
            };
            let presence = if with_presence {
                Some(
                    presence::Statements::prepare(&publisher)
                        .await
                        .map_err(fail)?,
                )
            } else {
                None
            };
            let own_pid: i32 = publisher
                .query_one("SELECT pg_backend_pid()", &[])
                .await
                .map_err(fail)?
                .get(0);
            let (listener, connection) = config.connect(NoTls).await.map_err(fail)?;
            let listener_closed = listen(connection, inbox, own_pid);
            let closed = future::select(publisher_closed, listener_closed)
                .map(|either| {
                    let (which, why) = match either {
                        future::Either::Left((why, _)) => ("publishing", why),
                        future::Either::Right((why, _)) => ("listening", why),
                    };
                    format!(
                        "the {which} connection ended: {}",
                        why.unwrap_or_else(|_| "dropped".into())
                    )
                })
                .boxed_local();
            Ok(Connected {
                link: Rc::new(PgLink {
                    listener,
                    publisher,
                    notify,
                    history,
                    presence,
                }),
                closed,
            })
        }
        .boxed_local()
    }

    fn apply(
        &self,
        link: &Rc<PgLink>,
        op: EdgeOp,
        channels: Vec<String>,
    ) -> LocalBoxFuture<'static, Result<(), RequestError>> {
        let link = Rc::clone(link);
        async move {
            link.listener
                .batch_execute(&listen_sql(op, &channels))
                .await
                .map_err(|err| classify(&err))
        }
        .boxed_local()
    }

    fn publish(
        &self,
        link: &Rc<PgLink>,
        messages: Vec<Outgoing>,
    ) -> LocalBoxFuture<'static, PublishResults> {
        let link = Rc::clone(link);
        async move {
            // join_all polls the futures in order the first time, which is when each sends
            // its query: the pipeline keeps the publishing order.
            let results = join_all(messages.iter().map(|message| {
                let link = Rc::clone(&link);
                async move {
                    match message {
                        Outgoing::Message { channel, body } => link
                            .publisher
                            .execute_raw(&link.notify, [channel, body])
                            .await
                            .map(|_| None),
                        Outgoing::Record {
                            topic,
                            event,
                            payload,
                        } => {
                            let Some((record, _)) = &link.history else {
                                return Ok(None);
                            };
                            let row = link
                                .publisher
                                .query_one(record, &[&topic.as_str(), payload, event])
                                .await?;
                            let position: Option<String> = row.get(0);
                            Ok(position.and_then(|text| text.parse().ok()))
                        }
                    }
                }
            }))
            .await;
            results
                .into_iter()
                .map(|result| match result {
                    Ok(position) => Ok(Ok(position)),
                    Err(err) => match classify(&err) {
                        RequestError::Refused(reason) => Ok(Err(reason)),
                        _ => Err(err.to_string()),
                    },
                })
                .collect()
        }
        .boxed_local()
    }

    fn read_history(
        &self,
        link: &Rc<PgLink>,
        topic: &Topic,
        after: u64,
        limit: u32,
    ) -> LocalBoxFuture<'static, Result<HistoryRead, RequestError>> {
        let link = Rc::clone(link);
        let topic = topic.clone();
        async move {
            let Some((_, read)) = &link.history else {
                return Err(RequestError::Refused("history is not installed".into()));
            };
            let after = i64::try_from(after).unwrap_or(i64::MAX);
            let limit = i32::try_from(limit).unwrap_or(i32::MAX);
            let row = link
                .publisher
                .query_one(read, &[&topic.as_str(), &after, &limit])
                .await
                .map_err(|err| classify(&err))?;
            let text: String = row.get(0);
            history::parse_read(&text).map_err(RequestError::Failed)
        }
        .boxed_local()
    }

    fn presence(
        &self,
        link: &Rc<PgLink>,
        op: PresenceOp,
    ) -> LocalBoxFuture<'static, Result<PresenceReply, RequestError>> {
        let link = Rc::clone(link);
        async move {
            let Some(statements) = &link.presence else {
                return Err(RequestError::Refused("presence is not installed".into()));
            };
            presence::perform(&link.publisher, statements, &op).await
        }
        .boxed_local()
    }

    fn ping(&self, link: &Rc<PgLink>) -> LocalBoxFuture<'static, Result<(), String>> {
        let link = Rc::clone(link);
        async move {
            // Quiet streams past their TTL: their rows go (the next publication starts a new
            // epoch anyway). Pipelined with the probes, so a ping costs one round trip, not
            // two: a slow link must not look dead. A failure here is not the link's.
            let cleanup = async {
                match &link.history {
                    Some(_) => link.publisher.batch_execute(history::CLEANUP_SQL).await,
                    None => Ok(()),
                }
            };
            let (listening, publishing, cleaned) = future::join3(
                link.listener.simple_query("SELECT 1"),
                link.publisher.simple_query("SELECT 1"),
                cleanup,
            )
            .await;
            listening
                .map(|_| ())
                .map_err(|err| format!("listening connection: {err}"))
                .and(
                    publishing
                        .map(|_| ())
                        .map_err(|err| format!("publishing connection: {err}")),
                )?;
            if let Err(err) = cleaned {
                debug!(%err, "history cleanup failed");
            }
            Ok(())
        }
        .boxed_local()
    }
}

/// One SQL string with a `LISTEN` or `UNLISTEN` per channel, in order.
fn listen_sql(op: EdgeOp, channels: &[String]) -> String {
    let verb = match op {
        EdgeOp::Subscribe => "LISTEN ",
        EdgeOp::Unsubscribe => "UNLISTEN ",
    };
    let mut sql = String::new();
    for channel in channels {
        sql.push_str(verb);
        sql.push_str(&quote_ident(channel));
        sql.push(';');
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_statements_quote_every_channel_in_order() {
        let channels = ["room:1".to_owned(), r#"we"ird"#.to_owned()];
        assert_eq!(
            listen_sql(EdgeOp::Subscribe, &channels),
            r#"LISTEN "room:1";LISTEN "we""ird";"#
        );
        assert_eq!(
            listen_sql(EdgeOp::Unsubscribe, &channels[..1]),
            r#"UNLISTEN "room:1";"#
        );
    }

    #[test]
    fn one_install_declares_the_channel_function_once() {
        let rules = HistoryRules::none();
        let plain = PostgresBackend::new("postgres://sb@127.0.0.1:1/app", "p:", &rules).unwrap();
        assert!(plain.install().is_none(), "nothing to install");
        let (sql, what) = plain.with_presence().install().unwrap();
        assert_eq!(what, "presence");
        assert!(sql.starts_with("BEGIN;\nSELECT pg_advisory_xact_lock(7469636803);"));
        assert!(sql.ends_with("COMMIT;\n"));
        assert_eq!(sql.matches("FUNCTION switchboard_channel(").count(), 1);
        assert!(sql.contains("name text := 'p:' || '__presence:' || topic;"));
        let both = install_sql(Some("-- history\n"), Some("-- presence\n")).unwrap();
        assert_eq!(both.matches("FUNCTION switchboard_channel(").count(), 1);
        assert!(both.find("switchboard_channel(").unwrap() < both.find("-- history").unwrap());
        assert!(both.find("-- history").unwrap() < both.find("-- presence").unwrap());
    }

    #[test]
    fn urls_and_connection_strings_parse() {
        let config = parse_url("postgres://sb@127.0.0.1:5433/app").unwrap();
        assert_eq!(config.get_application_name(), Some("switchboard"));
        assert_eq!(config.get_ports(), [5433]);
        let config = parse_url("host=/tmp port=5 user=x application_name=mine").unwrap();
        assert_eq!(config.get_application_name(), Some("mine"));
        assert!(parse_url("postgres://[bad").is_err());
    }
}
