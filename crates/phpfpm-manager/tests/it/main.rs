//! The one integration test binary. Everything here runs real php-fpm (and,
//! where a test says so, promtool) through the helpers in `support`.

// Tests, benchmarks and their helpers start and signal their own processes.
#![allow(clippy::disallowed_methods)]
// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use fpm_testkit as support;

/// An adopted master's log lines reach the next manager's log.
mod adopted_log;
/// The API at its edges: oversized request heads, the per-client connection
/// cap, the commands over TLS and mTLS.
mod api_edges;
/// Authentication and scopes, TLS and mTLS, per-client limits, the audit
/// trail, and the refused unsafe default.
mod auth;
/// The autoscaler acting: caps moved by hand-over, pins, reloads, restarts.
mod autoscale;
/// The command line: exit codes, validate, example-config.
mod cli;
/// The collector against real php-fpm pools: parsing, self-exclusion,
/// error pages, and isolation of a hanging pool.
mod collector;
/// The daemon end to end: zero-config start, /metrics through promtool,
/// health, API, graceful shutdown leaving no php-fpm behind.
mod daemon;
/// Deep collection through the daemon: accept queue, memory, interval, events.
mod deep;
/// The daemon against a fake FastCGI server sending hostile replies:
/// bounded memory, no panic, every reason counted, valid /metrics.
mod hostile;
/// The HTTP surface under slow, idle and numerous clients; query strings.
mod http_limits;
/// deploy/'s YAML: kubernetes-validate, yamllint, manifests against the
/// manager and the rules.
mod kubernetes;
/// A pool's life: graceful and forced stops, the backlog during a restart,
/// secrets.
mod lifecycle;
/// OPcache of observed pools: figures, and the reason when the probe is kept out.
mod observed_opcache;
/// The OPcache probe against real php-fpm, nginx in front for reachability.
mod opcache;
/// The OpenAPI document fuzzed by schemathesis against a running manager.
mod openapi;
/// The operator's routes and commands: pool reload and restart, config
/// reload, annotations, `status`, and hostile requests at the socket.
mod operate;
/// OpenTelemetry traces against a real OTLP receiver (gRPC and HTTP); a
/// refusing or hanging collector costs no collection and no memory.
mod otel;
/// The web page in headless chromium: live overview, history charts,
/// events, markup shown as text, no request beyond the manager.
mod page;
/// The dashboard and the alert rules: promtool, and a real Prometheus
/// scraping a real manager.
mod prometheus;
/// A refused SIGHUP reload, visible over HTTP with every problem.
mod reload;
/// SIGHUP applies the `server` and `phpfpm` sections: a new address, the API
/// switch, refusals of what cannot change live.
mod reload_sections;
/// `run --replace`: finding the running manager by its lock, never by name.
mod replace;
/// A master stopped by SIGSTOP: not ready, an event, and a restart after
/// the grace unless it resumes.
mod stall;
/// The supervisor under load through nginx: hand-overs, crashes, adoption.
mod supervisor;
/// The systemd unit (systemd-analyze) and the sd_notify protocol.
mod systemd;
