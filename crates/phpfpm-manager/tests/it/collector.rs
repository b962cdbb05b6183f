//! The collector against real php-fpm: what it reads, what it leaves out, how
//! it reports error pages, and that a hanging pool never delays the others.

use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use phpfpm_manager::collect::{collect_once, run_pool, PoolCollector, ProbeMarker};
use phpfpm_manager::config::{self, Endpoint, LoadInput};
use phpfpm_manager::fastcgi::{self, Timeouts};
use phpfpm_manager::state::AppState;
use tokio_util::sync::CancellationToken;

use crate::support::{rt, FpmOpts, TestFpm};

/// An AppState whose config lists exactly `pools`.
fn state_for(pools: Vec<config::Pool>) -> Arc<AppState> {
    state_with_interval(pools, Duration::from_secs(5))
}

/// The same, collecting every `every` whatever the load.
fn state_with_interval(pools: Vec<config::Pool>, every: Duration) -> Arc<AppState> {
    let mut cfg = config::load(&LoadInput {
        cwd: "/tmp".into(),
        ..LoadInput::default()
    })
    .unwrap();
    cfg.pools = pools;
    cfg.monitoring.collect_interval = every;
    cfg.monitoring.interval.busy = every;
    cfg.monitoring.interval.normal = every;
    cfg.monitoring.interval.idle = every;
    AppState::new(cfg)
}

fn timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_millis(250),
        total: Duration::from_secs(5),
    }
}

#[test]
fn reads_a_real_pool_through_status_listen() {
    let fpm = TestFpm::start(FpmOpts {
        name: "plain",
        max_children: 3,
        ..FpmOpts::default()
    });
    let pool = fpm.pool();
    let state = state_for(vec![pool.clone()]);
    // A master that just said "ready" may still be forking its last worker
    // on a loaded machine: look until all three are there.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = rt().block_on(collect_once(&pool, &state, &ProbeMarker::new()));
        assert!(up, "{:?}", state.pools()[&pool.name].last_error);
        if state.pools()[&pool.name].derived.total == 3 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let pools = state.pools();
    let s = &pools[&pool.name];
    assert!(s.up && s.ping_ok, "{:?}", s.last_error);
    let st = s.status.as_ref().unwrap();
    assert_eq!(st.pool, "plain");
    assert_eq!(st.process_manager, "static");
    assert_eq!(s.derived.total, 3);
    assert_eq!(s.derived.idle, 3);
    // Every worker pid in the status page is a child of the master.
    for p in &st.processes {
        let stat = fpm_kernel::procfs::read_stat(p.pid).unwrap();
        assert_eq!(stat.ppid, fpm.pid());
    }
}

#[test]
fn own_request_through_the_main_socket_is_not_counted_as_load() {
    // No status_listen: the status page is served by a pool worker, which
    // php-fpm then reports as active.
    let fpm = TestFpm::start(FpmOpts {
        name: "selfreq",
        max_children: 2,
        status_listen: false,
        ..FpmOpts::default()
    });
    let mut pool = fpm.pool();
    pool.request_timeout = Duration::from_secs(5);
    let state = state_for(vec![pool.clone()]);
    let rt = rt();
    let script = fpm.www("sleep.php");
    let ep = Endpoint::Unix(fpm.socket.clone());
    rt.block_on(async {
        // One real request in service for 1.5 s.
        let busy =
            tokio::spawn(async move { fastcgi::get(&ep, &script, "ms=1500", timeouts()).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let up = collect_once(&pool, &state, &ProbeMarker::new()).await;
        assert!(up, "{:?}", state.pools()[&pool.name].last_error);
        let reply = busy.await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&reply.stdout).contains("ok"));
    });
    let pools = state.pools();
    let s = &pools[&pool.name];
    let st = s.status.as_ref().unwrap();
    assert_eq!(
        st.active_processes, 2,
        "php-fpm counts the status request itself"
    );
    assert_eq!(s.derived.active, 1, "the collector does not");
    assert_eq!(s.derived.idle, 1);
}

#[test]
fn error_pages_become_scrape_failures_with_a_reason() {
    let fpm = TestFpm::start(FpmOpts {
        name: "errpage",
        ..FpmOpts::default()
    });
    let mut pool = fpm.pool();
    // A path that is not pm.status_path: php-fpm looks for a script and
    // answers "File not found." with status 404.
    pool.status_path = "/not-the-status-page".into();
    let state = state_for(vec![pool.clone()]);
    // One failure of a pool never seen up is a master still starting, not
    // yet a failure; from the third on they count (all three of them).
    let up = rt().block_on(collect_once(&pool, &state, &ProbeMarker::new()));
    assert!(!up);
    assert_eq!(state.pools()[&pool.name].scrape_failures, 0);
    let mon = state.config().monitoring.clone();
    let mut collector = PoolCollector::new(pool.clone(), state.clone(), &mon);
    for _ in 0..3 {
        rt().block_on(collector.collect());
    }
    let pools = state.pools();
    let s = &pools[&pool.name];
    assert!(!s.up);
    assert!(s.ping_ok, "ping still answers");
    assert_eq!(s.scrape_failures, 3);
    let err = s.last_error.as_ref().unwrap();
    assert_eq!(err.kind, "http_status");
    assert!(err.message.contains("404"), "{}", err.message);
    assert!(err.message.contains("File not found"), "{}", err.message);
    let errors = state
        .metrics
        .scrape_errors
        .with_label_values(&["errpage", "http_status"])
        .get();
    assert_eq!(errors, 3);
}

#[test]
fn a_hanging_pool_does_not_delay_healthy_pools() {
    let healthy: Vec<TestFpm> = ["h1", "h2", "h3"]
        .into_iter()
        .map(|name| {
            TestFpm::start(FpmOpts {
                name,
                max_children: 1,
                ..FpmOpts::default()
            })
        })
        .collect();
    // A pool whose socket accepts connections and never answers.
    let dir = crate::support::TestDir::new("hang");
    let hang_path = dir.join("hang.sock");
    let listener = UnixListener::bind(&hang_path).unwrap();
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().take(64) {
            match s {
                Ok(s) => held.push(s),
                Err(_) => break,
            }
        }
    });
    let mut hang = healthy[0].pool();
    hang.name = fpm_core::PoolName::new("hang").unwrap();
    hang.endpoint = Endpoint::Unix(hang_path.clone());
    hang.status_endpoint = Endpoint::Unix(hang_path);
    // Long enough that the hanging pool's first request cannot time out
    // while the healthy pools are being counted, however slow the machine.
    hang.request_timeout = Duration::from_secs(120);

    let mut pools: Vec<_> = healthy.iter().map(|f| f.pool()).collect();
    pools.push(hang.clone());
    let interval = Duration::from_millis(200);
    let state = state_with_interval(pools.clone(), interval);
    let count = |name: &str| {
        state
            .metrics
            .scrape_duration
            .with_label_values(&[name])
            .get_sample_count()
    };
    let cancel = CancellationToken::new();
    let started = Instant::now();
    // Each healthy pool must be collected 5 times while the hanging pool's
    // first collection is still waiting: they never wait for it.
    let wanted = 5;
    rt().block_on(async {
        let tasks: Vec<_> = pools
            .iter()
            .map(|p| tokio::spawn(run_pool(p.clone(), state.clone(), cancel.clone())))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        while healthy.iter().any(|f| count(f.opts.name) < wanted) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cancel.cancel();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let elapsed = started.elapsed();
    for f in &healthy {
        let n = count(f.opts.name);
        assert!(
            n >= wanted,
            "pool {} collected {n} times in {elapsed:?}, expected at least {wanted}",
            f.opts.name
        );
        assert!(state.pools()[&f.pool().name].up);
    }
    // The hanging pool's first request has not even timed out yet.
    assert_eq!(
        count("hang"),
        0,
        "{:?}",
        state.pools()[&hang.name].last_error
    );
    assert!(!state.pools()[&hang.name].up);
    drop(holder);
}
