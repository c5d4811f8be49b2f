//! A PostgreSQL session driven from pim's synchronous code: the asynchronous client library
//! and its connection, run on a runtime of this thread's own.
//!
//! The library's synchronous wrapper (the `postgres` crate) enters its runtime once for every
//! row a query returns, and polls the connection each time. Rows arrive in batches (all the
//! whole messages one read from the socket holds, 8 KB), so here a stream's next row is first
//! taken from the batch at hand without the runtime, and the runtime is entered only when
//! the batch is spent: `audit verify` reading 1,000,000 events in binary COPY took 0.48-0.65 s
//! of CPU to read the rows through the wrapper, and 0.39-0.41 s this way (README,
//! Performance).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio_postgres::types::{BorrowToSql, ToSql, Type};
use tokio_postgres::{Error, Row, Statement};

type Connection = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

/// One session: the client, and what drives its connection.
pub struct Client {
    // Dropped first: a client gone closes the session, which the driver then finishes.
    client: tokio_postgres::Client,
    driver: Driver,
}

/// The runtime and the connection it drives (`None` once the connection has ended).
struct Driver {
    runtime: tokio::runtime::Runtime,
    connection: Option<Connection>,
}

impl Driver {
    /// Run `future` to its end, driving the connection beside it. Once the connection has
    /// ended, what waits on it fails as closed; where it ended with an error of its own (the
    /// socket closed under it), that error is returned in place of one that says only
    /// "closed", but never in place of what the server answered the request (its reply to
    /// a `COMMIT` that came in the same read as the end; the reason it gave for ending a
    /// session in the middle of a query).
    fn block_on<T>(&mut self, future: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        let mut future = std::pin::pin!(future);
        let connection = &mut self.connection;
        self.runtime.block_on(std::future::poll_fn(|cx| {
            let mut ended = None;
            if let Some(c) = connection {
                if let Poll::Ready(end) = c.as_mut().poll(cx) {
                    // Dropped: what it still owed a request reads as closed.
                    *connection = None;
                    ended = end.err();
                }
            }
            match (future.as_mut().poll(cx), ended) {
                (Poll::Ready(Err(e)), Some(why)) if e.as_db_error().is_none() => {
                    Poll::Ready(Err(why))
                }
                (Poll::Pending, Some(why)) => Poll::Ready(Err(why)),
                (polled, _) => polled,
            }
        }))
    }

    /// The next item of `stream`: taken from what has arrived without entering the runtime
    /// when it is there, else as `block_on` does.
    fn next<T, S>(&mut self, mut stream: Pin<&mut S>) -> Option<Result<T, Error>>
    where
        S: futures_core::Stream<Item = Result<T, Error>>,
    {
        let mut cx = Context::from_waker(Waker::noop());
        if let Poll::Ready(item) = stream.as_mut().poll_next(&mut cx) {
            return item;
        }
        self.block_on(std::future::poll_fn(|cx| {
            stream.as_mut().poll_next(cx).map(Ok)
        }))
        .unwrap_or_else(|e| Some(Err(e)))
    }
}

impl Drop for Driver {
    /// The session closed as the server expects (a `Terminate` message, not a dropped
    /// socket): the client is gone by now, which the connection sees and ends on.
    fn drop(&mut self) {
        if let Some(c) = self.connection.take() {
            let _ = self.runtime.block_on(c);
        }
    }
}

impl Client {
    /// Connect as `config` says, through `tls` (or none).
    pub fn connect(
        config: &tokio_postgres::Config,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<Client, Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a thread's own runtime can be built");
        let (client, connection): (_, Connection) = match tls {
            Some(tls) => {
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
                let (client, connection) = runtime.block_on(config.connect(tls))?;
                (client, Box::pin(connection))
            }
            None => {
                let (client, connection) =
                    runtime.block_on(config.connect(tokio_postgres::NoTls))?;
                (client, Box::pin(connection))
            }
        };
        Ok(Client {
            client,
            driver: Driver {
                runtime,
                connection: Some(connection),
            },
        })
    }

    pub fn batch_execute(&mut self, sql: &str) -> Result<(), Error> {
        self.driver.block_on(self.client.batch_execute(sql))
    }

    pub fn prepare(&mut self, sql: &str) -> Result<Statement, Error> {
        self.driver.block_on(self.client.prepare(sql))
    }

    pub fn prepare_typed(&mut self, sql: &str, types: &[Type]) -> Result<Statement, Error> {
        self.driver.block_on(self.client.prepare_typed(sql, types))
    }

    pub fn execute(
        &mut self,
        stmt: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, Error> {
        self.driver.block_on(self.client.execute(stmt, params))
    }

    pub fn query(
        &mut self,
        stmt: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        self.driver.block_on(self.client.query(stmt, params))
    }

    /// Each row of `stmt` handed to `f` as it arrives, until `f` returns false (the rest
    /// is read and dropped by the connection).
    pub fn query_each<P, I, E>(
        &mut self,
        stmt: &Statement,
        params: I,
        mut f: impl FnMut(Row) -> Result<bool, E>,
    ) -> Result<(), E>
    where
        P: BorrowToSql,
        I: IntoIterator<Item = P>,
        I::IntoIter: ExactSizeIterator,
        E: From<Error>,
    {
        let rows = self.driver.block_on(self.client.query_raw(stmt, params))?;
        let mut rows = std::pin::pin!(rows);
        while let Some(row) = self.driver.next(rows.as_mut()) {
            if !f(row?)? {
                break;
            }
        }
        Ok(())
    }

    /// The data of `COPY ... TO STDOUT`, as a reader.
    pub fn copy_out(&mut self, sql: &str) -> Result<CopyOut<'_>, Error> {
        let stream = self.driver.block_on(self.client.copy_out(sql))?;
        Ok(CopyOut {
            stream: Box::pin(stream),
            held: Bytes::new(),
            ended: false,
            driver: &mut self.driver,
        })
    }
}

/// A `COPY ... TO STDOUT` being read: each message the server sends (a row, in binary COPY)
/// is held whole, for `fill_buf` to hand over where it lies.
pub struct CopyOut<'a> {
    stream: Pin<Box<tokio_postgres::CopyOutStream>>,
    held: Bytes,
    ended: bool,
    driver: &'a mut Driver,
}

impl std::io::Read for CopyOut<'_> {
    fn read(&mut self, into: &mut [u8]) -> std::io::Result<usize> {
        use std::io::BufRead;
        let held = self.fill_buf()?;
        let n = held.len().min(into.len());
        into[..n].copy_from_slice(&held[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl std::io::BufRead for CopyOut<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.held.is_empty() && !self.ended {
            match self.driver.next(self.stream.as_mut()) {
                Some(Ok(bytes)) => self.held = bytes,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                // Not asked again: a stream past its end answers with an error.
                None => self.ended = true,
            }
        }
        Ok(&self.held)
    }

    fn consume(&mut self, n: usize) {
        use bytes::Buf;
        self.held.advance(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_server;
    use std::io::{BufRead, Read};

    /// A session of this module's on a new database of the test server (PostgreSQL pass
    /// only), and the database's URL.
    fn session() -> Option<(Client, String)> {
        if !test_server::on_postgres() {
            return None;
        }
        let url = test_server::fresh_database();
        let client = Client::connect(&url.parse().unwrap(), None).unwrap();
        Some((client, url))
    }

    /// The server ends every session of the database at `url` named `name`.
    fn end_sessions_named(url: &str, name: &str) {
        test_server::client(url)
            .batch_execute(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = '{name}'"
            ))
            .unwrap();
    }

    #[test]
    fn rows_come_whole_in_order_and_a_query_left_early_leaves_the_session_usable() {
        let Some((mut c, _)) = session() else { return };
        let stmt = c
            .prepare("SELECT n, repeat('x', n % 300) FROM generate_series(1, 50000) n")
            .unwrap();
        let mut seen = 0i32;
        c.query_each(&stmt, std::iter::empty::<&str>(), |row| {
            seen += 1;
            assert_eq!(row.get::<_, i32>(0), seen);
            assert_eq!(row.get::<_, &str>(1).len(), seen as usize % 300);
            Ok::<_, Error>(true)
        })
        .unwrap();
        assert_eq!(seen, 50000);
        // Stopped after ten rows: the rest is read and dropped, and the next query answers.
        let mut taken = 0;
        c.query_each(&stmt, std::iter::empty::<&str>(), |_| {
            taken += 1;
            Ok::<_, Error>(taken < 10)
        })
        .unwrap();
        assert_eq!(taken, 10);
        let one = c.prepare("SELECT 41 + 1").unwrap();
        assert_eq!(c.query(&one, &[]).unwrap()[0].get::<_, i32>(0), 42);
    }

    #[test]
    fn a_copy_reads_the_bytes_the_servers_other_clients_read() {
        let Some((mut c, url)) = session() else {
            return;
        };
        let copy =
            "COPY (SELECT n, repeat(md5(n::text), n % 40) FROM generate_series(1, 20000) n) \
                    TO STDOUT (FORMAT binary)";
        let mut ours = Vec::new();
        let mut reader = c.copy_out(copy).unwrap();
        reader.read_to_end(&mut ours).unwrap();
        // Asked again past its end, it is still at its end.
        assert!(reader.fill_buf().unwrap().is_empty());
        drop(reader);
        let mut theirs = Vec::new();
        test_server::client(&url)
            .copy_out(copy)
            .unwrap()
            .read_to_end(&mut theirs)
            .unwrap();
        assert!(ours.len() > 1_000_000, "{}", ours.len());
        assert!(ours == theirs, "the COPY's bytes differ");
        // Left after one message: the session goes on.
        let mut reader = c.copy_out(copy).unwrap();
        assert!(reader.fill_buf().unwrap().starts_with(b"PGCOPY\n"));
        drop(reader);
        c.batch_execute("SELECT 1").unwrap();
    }

    #[test]
    fn a_session_the_server_ends_fails_with_the_servers_reason_and_never_hangs() {
        let Some((mut c, url)) = session() else {
            return;
        };
        c.batch_execute("SET application_name = 'pim_ended_by_server'")
            .unwrap();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            end_sessions_named(&url, "pim_ended_by_server");
            std::thread::sleep(std::time::Duration::from_millis(200));
            let first = c.batch_execute("SELECT 1").unwrap_err();
            let first = first
                .as_db_error()
                .map_or(first.to_string(), |e| e.to_string());
            let then = c.batch_execute("SELECT 1").unwrap_err().to_string();
            let stmt = c.prepare("SELECT 1");
            done.send((first, then, stmt.is_err())).unwrap();
        });
        let (first, then, stmt_failed) = finished
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("a session the server ended answers at once");
        assert!(
            first.contains("terminating connection due to administrator command"),
            "{first}"
        );
        assert!(then.contains("closed"), "{then}");
        assert!(stmt_failed);
    }

    #[test]
    fn a_query_the_server_ends_the_session_in_fails_with_the_servers_reason() {
        let Some((mut c, url)) = session() else {
            return;
        };
        c.batch_execute("SET application_name = 'pim_ended_in_a_query'")
            .unwrap();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(500));
            end_sessions_named(&url, "pim_ended_in_a_query");
        });
        let e = c.batch_execute("SELECT pg_sleep(20)").unwrap_err();
        killer.join().unwrap();
        let db = e.as_db_error().map(|d| d.message().to_string());
        assert_eq!(
            db.as_deref(),
            Some("terminating connection due to administrator command"),
            "{e}"
        );
    }

    /// A server of one session on a Unix socket in `dir`: it lets the client in, reads one
    /// query, and writes `reply` and closes the socket in one go. How to reach it.
    fn one_answer_server(dir: &std::path::Path, reply: Vec<u8>) -> tokio_postgres::Config {
        use std::io::Write;
        let listener = std::os::unix::net::UnixListener::bind(dir.join(".s.PGSQL.5999")).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let message = |s: &mut std::os::unix::net::UnixStream, tagged: bool| {
                let mut head = vec![0u8; if tagged { 5 } else { 4 }];
                s.read_exact(&mut head).unwrap();
                let len = u32::from_be_bytes(head[head.len() - 4..].try_into().unwrap());
                let mut body = vec![0u8; len as usize - 4];
                s.read_exact(&mut body).unwrap();
            };
            // The startup message, answered with AuthenticationOk and ReadyForQuery (idle).
            message(&mut s, false);
            s.write_all(b"R\0\0\0\x08\0\0\0\0Z\0\0\0\x05I").unwrap();
            message(&mut s, true); // the query
            s.write_all(&reply).unwrap();
        });
        let mut config = tokio_postgres::Config::new();
        config.host_path(dir).port(5999).user("pim").dbname("pim");
        config
    }

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn what_the_server_answered_before_it_closed_the_socket_is_what_the_caller_gets() {
        let dir = tempfile::tempdir().unwrap();
        // The reason the server gave for ending the session, not "connection closed".
        let fatal = message(
            b'E',
            b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0",
        );
        let mut c = Client::connect(&one_answer_server(dir.path(), fatal), None).unwrap();
        let e = c.batch_execute("SELECT pg_sleep(20)").unwrap_err();
        assert_eq!(
            e.as_db_error().map(|d| d.message()),
            Some("terminating connection due to administrator command"),
            "{e}"
        );
        assert!(c.batch_execute("SELECT 1").is_err());
        // A COMMIT the server answered, then closed: it happened, and is not an error.
        let dir = tempfile::tempdir().unwrap();
        let mut done = message(b'C', b"COMMIT\0");
        done.extend(message(b'Z', b"I"));
        let mut c = Client::connect(&one_answer_server(dir.path(), done), None).unwrap();
        c.batch_execute("COMMIT").unwrap();
    }
}
