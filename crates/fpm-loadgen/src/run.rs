//! The open-loop runner: sends every scheduled request at its time, whether
//! or not earlier ones have finished, and records how each one ended.
//!
//! Every request gets a fresh TCP connection (`Connection: close`): there is
//! no pool whose limit could hold a request back, so the schedule never waits
//! for the server. The run is bounded in count (the schedule is checked
//! against [`crate::schedule::MAX_ARRIVALS`]; the in-flight cap turns requests
//! due while too many are outstanding into failures instead of piling up) and
//! in time (a per-request timeout, and a hard deadline after which whatever
//! is still open is abandoned and counted as failed).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::schedule::{self, Phase, ScheduleError};
use crate::stats::{ErrorKind, Outcome, Record};
use crate::target::Target;

/// One target and its rate schedule.
#[derive(Debug, Clone)]
pub struct Stream {
    pub name: String,
    pub target: Target,
    pub phases: Vec<Phase>,
    /// Add `n=<k>` to the query of the stream's `k`-th request (from 0), so
    /// that an app can draw its per-request randomness from it: every run of
    /// the same plan then asks for the same work, request by request, and
    /// two servers are compared on the same draws (common random numbers).
    pub numbered: bool,
}

impl Stream {
    /// The path of the stream's `k`-th request.
    fn path(&self, k: u64) -> String {
        if !self.numbered {
            return self.target.path.clone();
        }
        let sep = if self.target.path.contains('?') {
            '&'
        } else {
            '?'
        };
        format!("{}{sep}n={k}", self.target.path)
    }
}

/// A whole run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub streams: Vec<Stream>,
    /// Seed of the arrival times; stream `i` uses the seed's sequence `i`.
    pub seed: u64,
    /// Requests outstanding at once, over all streams; a request due while
    /// this many are open is not sent and counts as failed.
    pub max_in_flight: usize,
    /// Time a request may take, from its scheduled time, before it counts
    /// as a timeout.
    pub request_timeout: Duration,
    /// How long after the last phase ends the run waits for open requests.
    pub grace: Duration,
}

impl Plan {
    /// Length of the longest schedule.
    pub fn duration(&self) -> Duration {
        self.streams
            .iter()
            .map(|s| schedule::total_duration(&s.phases))
            .max()
            .unwrap_or_default()
    }

    /// The hard deadline, from the start: the schedule plus the grace.
    pub fn deadline(&self) -> Duration {
        self.duration() + self.grace
    }

    /// Every arrival of every stream, as (offset, stream), in time order.
    pub fn arrivals(&self) -> Result<Vec<(Duration, usize)>, PlanError> {
        if self.streams.is_empty() {
            return Err(PlanError::NoStream);
        }
        if self.max_in_flight == 0 {
            return Err(PlanError::ZeroInFlight);
        }
        let mut all = Vec::new();
        for (i, s) in self.streams.iter().enumerate() {
            let a = schedule::arrivals(&s.phases, self.seed, i as u64)
                .map_err(|e| PlanError::Schedule(s.name.clone(), e))?;
            all.extend(a.into_iter().map(|t| (t, i)));
        }
        if all.len() as u64 > schedule::MAX_ARRIVALS {
            return Err(PlanError::Schedule(
                "all streams".into(),
                ScheduleError::TooLarge(all.len() as u64),
            ));
        }
        all.sort_by_key(|&(t, i)| (t, i));
        Ok(all)
    }
}

/// Why a plan cannot run.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("the plan has no stream")]
    NoStream,
    #[error("max_in_flight must be at least 1")]
    ZeroInFlight,
    #[error("stream '{0}': {1}")]
    Schedule(String, ScheduleError),
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// When the schedule's time zero was, as a wall-clock reference for
    /// correlating with other measurements of the same run.
    pub started: std::time::Instant,
    /// One record per scheduled request, in schedule order.
    pub records: Vec<Record>,
}

/// Runs a plan to its end (or its hard deadline).
pub async fn run(plan: &Plan) -> Result<RunResult, PlanError> {
    let arrivals = plan.arrivals()?;
    raise_fd_limit();
    let targets: Arc<Vec<Target>> =
        Arc::new(plan.streams.iter().map(|s| s.target.clone()).collect());
    let mut sent_per_stream = vec![0u64; plan.streams.len()];
    let mut records: Vec<Option<Record>> = vec![None; arrivals.len()];
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut tasks: JoinSet<(usize, Record)> = JoinSet::new();
    let start = Instant::now();
    let started = std::time::Instant::now();
    let deadline = start + plan.deadline();
    let timeout = plan.request_timeout;

    for (idx, &(at, stream)) in arrivals.iter().enumerate() {
        let due = start + at;
        // Numbered by schedule, not by what was sent: a request refused at
        // the in-flight cap keeps its number from the next one.
        let path = plan.streams[stream].path(sent_per_stream[stream]);
        sent_per_stream[stream] += 1;
        // Reap finished requests while waiting for the next one is due, so
        // finished tasks do not accumulate.
        loop {
            tokio::select! {
                biased;
                () = tokio::time::sleep_until(due) => break,
                Some(done) = tasks.join_next() => {
                    if let Ok((i, r)) = done {
                        records[i] = Some(r);
                    }
                }
            }
        }
        if in_flight.load(Ordering::Relaxed) >= plan.max_in_flight {
            records[idx] = Some(Record {
                stream,
                scheduled: at,
                sent: None,
                latency: None,
                outcome: Outcome::Error(ErrorKind::InFlightCap),
            });
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let targets = Arc::clone(&targets);
        let counter = Arc::clone(&in_flight);
        tasks.spawn(async move {
            let sent = Instant::now();
            let end_by = due + timeout;
            let outcome =
                match tokio::time::timeout_at(end_by, get_path(&targets[stream], &path)).await {
                    Ok(o) => o,
                    Err(_) => Outcome::Error(ErrorKind::Timeout),
                };
            let finished = Instant::now().min(end_by);
            counter.fetch_sub(1, Ordering::Relaxed);
            (
                idx,
                Record {
                    stream,
                    scheduled: at,
                    sent: Some(sent - start),
                    latency: Some(finished.saturating_duration_since(due)),
                    outcome,
                },
            )
        });
    }

    // Wait for the open requests, up to the hard deadline.
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => break,
            next = tasks.join_next() => match next {
                Some(Ok((i, r))) => records[i] = Some(r),
                Some(Err(_)) => {}
                None => break,
            },
        }
    }
    tasks.abort_all();
    let records = records
        .into_iter()
        .zip(&arrivals)
        .map(|(r, &(at, stream))| {
            r.unwrap_or(Record {
                stream,
                scheduled: at,
                sent: None,
                latency: None,
                outcome: Outcome::Error(ErrorKind::Deadline),
            })
        })
        .collect();
    Ok(RunResult { started, records })
}

/// One GET on a fresh connection, body read to the end.
pub async fn get(target: &Target) -> Outcome {
    get_path(target, &target.path).await
}

/// One GET of `path` on `target`'s server.
async fn get_path(target: &Target, path: &str) -> Outcome {
    let stream = match TcpStream::connect(target.addr).await {
        Ok(s) => s,
        Err(_) => return Outcome::Error(ErrorKind::Connect),
    };
    let _ = stream.set_nodelay(true);
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return Outcome::Error(ErrorKind::Http);
    };
    // The connection task ends when the server closes the connection or
    // when this request (its only user) is dropped.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = match http::Request::get(path)
        .header(http::header::HOST, target.host.as_str())
        .header(http::header::CONNECTION, "close")
        .header(http::header::USER_AGENT, "fpm-loadgen")
        .body(Empty::<Bytes>::new())
    {
        Ok(r) => r,
        Err(_) => return Outcome::Error(ErrorKind::Http),
    };
    let resp = match sender.send_request(req).await {
        Ok(r) => r,
        Err(_) => return Outcome::Error(ErrorKind::Http),
    };
    let status = resp.status().as_u16();
    match resp.into_body().collect().await {
        Ok(_) => Outcome::Status(status),
        Err(_) => Outcome::Error(ErrorKind::Http),
    }
}

/// Raises the soft open-files limit to the hard one: every request in flight
/// holds a socket, and the usual soft limit of 1024 would turn a queue at
/// the server into connect errors at the client.
pub fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn stream(name: &str, rate: f64) -> Stream {
        Stream {
            name: name.into(),
            target: Target::parse("http://127.0.0.1:1/").unwrap(),
            phases: vec![Phase::new(rate, Duration::from_secs(10))],
            numbered: false,
        }
    }

    #[test]
    fn numbered_streams_carry_the_requests_number_in_the_query() {
        let mut s = stream("a", 1.0);
        assert_eq!(s.path(7), "/");
        s.numbered = true;
        assert_eq!(s.path(7), "/?n=7");
        s.target = Target::parse("http://127.0.0.1:1/x.php?y=1").unwrap();
        assert_eq!(s.path(0), "/x.php?y=1&n=0");
    }

    #[test]
    fn arrivals_of_all_streams_are_merged_in_time_order() {
        let plan = Plan {
            streams: vec![stream("a", 50.0), stream("b", 20.0)],
            seed: 5,
            max_in_flight: 10,
            request_timeout: Duration::from_secs(1),
            grace: Duration::from_secs(2),
        };
        let a = plan.arrivals().unwrap();
        assert!(a.windows(2).all(|w| w[0].0 <= w[1].0));
        let from_b = a.iter().filter(|(_, s)| *s == 1).count();
        assert!(from_b > 100 && from_b < 300, "{from_b}");
        assert_eq!(plan.deadline(), Duration::from_secs(12));
    }

    #[test]
    fn bad_plans_are_refused() {
        let mut plan = Plan {
            streams: vec![],
            seed: 1,
            max_in_flight: 10,
            request_timeout: Duration::from_secs(1),
            grace: Duration::ZERO,
        };
        assert!(matches!(plan.arrivals(), Err(PlanError::NoStream)));
        plan.streams.push(stream("a", 1.0));
        plan.max_in_flight = 0;
        assert!(matches!(plan.arrivals(), Err(PlanError::ZeroInFlight)));
        plan.max_in_flight = 1;
        plan.streams[0].phases.clear();
        let e = plan.arrivals().unwrap_err().to_string();
        assert!(e.contains("stream 'a'") && e.contains("no phase"), "{e}");
    }
}
