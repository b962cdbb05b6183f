//! The benchmark's PHP application, generated into a temporary directory, and
//! the measurement of its own figures (worker memory, cold and warm request
//! times, the effect of a pre-filled `opcache.file_cache`).
//!
//! The app is shaped like a framework app with a database behind it:
//! 2 000 classes in separate files under `src/`, an autoloader, and every
//! request instantiating 200 of them (one of 40 "routes", each spanning four
//! modules of 50 classes: 200 classes), so compiling is what a cold worker pays and
//! OPcache is what a warm one saves. Most of a request is waiting: a
//! lognormal sleep with median 30 ms (sigma 0.5) stands for the database
//! call. About `ALLOC_MB` megabytes of data are built per request; PHP's
//! allocator keeps those pages for the next request, which is what leaves
//! real workers at tens of megabytes. The CPU part is kept small on purpose
//! (a 10× spike must fit two cores beside nginx and the load generator).
//! The load generator numbers its requests (`n=`) and the app seeds its
//! random draws with that number, so the k-th request of a run asks for the
//! same route and the same wait whoever serves it: contenders differ only
//! in how they serve the same work.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fpm_loadgen::{Outcome, Target};

/// Modules × classes per module = 2 000 classes.
pub(crate) const MODULES: usize = 40;
pub(crate) const PER_MODULE: usize = 50;
/// Modules one request walks through (4 × 50 = 200 classes).
pub(crate) const MODULES_PER_ROUTE: usize = 4;
/// Megabytes of data built per request.
pub(crate) const ALLOC_MB: usize = 12;

/// Median of the "database call" in ms: `REALLOAD_WAIT_MS`, 30 by default.
/// On a 2-core machine a 10x spike at 30 ms needs more CPU (PHP, nginx and
/// the load generator) than there is; a longer wait keeps the same number
/// of busy workers at a rate the machine can serve.
pub(crate) fn wait_ms() -> u64 {
    std::env::var("REALLOAD_WAIT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|v| (1..=2000).contains(v))
        .unwrap_or(30)
}

/// Writes the app under `root`; returns the document root (`public/`), which
/// holds `a/index.php` and `b/index.php` (one entry per pool).
pub(crate) fn generate(root: &Path) -> PathBuf {
    let src = root.join("src");
    std::fs::create_dir_all(src.join("Base")).unwrap();
    std::fs::write(src.join("Base/Model.php"), MODEL_PHP).unwrap();
    std::fs::write(src.join("Base/Handler.php"), HANDLER_PHP).unwrap();
    for m in 0..MODULES {
        let dir = src.join(format!("M{m:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..PER_MODULE {
            let n = m * PER_MODULE + i;
            std::fs::write(dir.join(format!("C{n:04}.php")), class_php(m, n)).unwrap();
        }
    }
    std::fs::write(root.join("app.php"), app_php()).unwrap();
    let public = root.join("public");
    for pool in ["a", "b"] {
        std::fs::create_dir_all(public.join(pool)).unwrap();
        std::fs::write(
            public.join(pool).join("index.php"),
            "<?php\nrequire __DIR__ . '/../../app.php';\n",
        )
        .unwrap();
    }
    public
}

const MODEL_PHP: &str = r#"<?php
declare(strict_types=1);

namespace App\Base;

abstract class Model
{
    protected array $attributes = [];

    public function fill(array $values): static
    {
        foreach ($values as $k => $v) {
            $this->attributes[$k] = $v;
        }
        return $this;
    }

    public function get(string $key, mixed $default = null): mixed
    {
        return $this->attributes[$key] ?? $default;
    }

    abstract public function table(): string;
}
"#;

const HANDLER_PHP: &str = r#"<?php
declare(strict_types=1);

namespace App\Base;

interface Handler
{
    public function handle(array $ctx): array;
}
"#;

/// One class of about 3 KB of source: fields, a conversion `match`, a
/// validator, an SQL builder and a few helpers, varied by `n` so that no two
/// files compile to the same thing.
fn class_php(m: usize, n: usize) -> String {
    let mut fields = String::new();
    let types = ["int", "string", "float", "bool", "json", "date"];
    for f in 0..8 {
        let _ = writeln!(
            fields,
            "        'f{f}_{n}' => '{}',",
            types[(n + f) % types.len()]
        );
    }
    let mut helpers = String::new();
    for h in 0..4 {
        let _ = write!(
            helpers,
            r#"
    public function helper{h}(array $rows): array
    {{
        $out = [];
        foreach ($rows as $i => $row) {{
            if (($i + {h}) % {k} === 0) {{
                continue;
            }}
            $out[] = is_array($row) ? implode(',', $row) . '#{n}' : (string) $row;
        }}
        return array_slice($out, 0, {lim});
    }}
"#,
            k = 2 + (n + h) % 5,
            lim = 5 + (n * 7 + h) % 11,
        );
    }
    format!(
        r#"<?php
declare(strict_types=1);

namespace App\M{m:02};

use App\Base\Handler;
use App\Base\Model;

final class C{n:04} extends Model implements Handler
{{
    public const TABLE = 'table_{n}';
    public const VERSION = {ver};

    private array $fields = [
{fields}    ];

    public function table(): string
    {{
        return self::TABLE;
    }}

    public function handle(array $ctx): array
    {{
        $row = [];
        foreach ($this->fields as $name => $type) {{
            $row[$name] = $type;
        }}
        $row['id'] = $ctx['id'] ?? {n};
        return $row;
    }}

    private function convert(string $type, mixed $value): mixed
    {{
        return match ($type) {{
            'int' => (int) $value,
            'float' => (float) $value * {ver},
            'bool' => (bool) $value,
            'json' => json_encode(['v' => $value, 'n' => {n}]),
            'date' => date('Y-m-d', {n} * 86400),
            default => (string) $value,
        }};
    }}

    public function validate(array $row): bool
    {{
        foreach ($row as $k => $v) {{
            if ($v === null || (is_string($v) && strlen($v) > {maxlen})) {{
                return false;
            }}
        }}
        return count($row) === count($this->fields);
    }}

    public function toSql(array $row): string
    {{
        $cols = implode(', ', array_keys($row));
        $marks = implode(', ', array_fill(0, count($row), '?'));
        return sprintf('INSERT INTO %s (%s) VALUES (%s)', self::TABLE, $cols, $marks);
    }}
{helpers}}}
"#,
        ver = n % 17 + 1,
        maxlen = 64 + n % 100,
    )
}

fn app_php() -> String {
    format!(
        r#"<?php
declare(strict_types=1);

spl_autoload_register(static function (string $class): void {{
    if (strncmp($class, 'App\\', 4) !== 0) {{
        return;
    }}
    require __DIR__ . '/src/' . str_replace('\\', '/', substr($class, 4)) . '.php';
}});

// The load generator numbers its requests: the n-th request draws the same
// route and wait in every run, so contenders are compared on the same work.
if (isset($_GET['n'])) {{
    mt_srand((int) $_GET['n']);
}}
$route = mt_rand(0, {modules} - 1);
$ctx = ['id' => mt_rand(1, 1000000), 'name' => 'user' . mt_rand()];
$fields = 0;
for ($k = 0; $k < {per_route}; $k++) {{
    $m = ($route + $k) % {modules};
    for ($i = 0; $i < {per_module}; $i++) {{
        $class = sprintf('App\\M%02d\\C%04d', $m, $m * {per_module} + $i);
        $fields += count((new $class())->handle($ctx));
    }}
}}

// Per-request data, written in blocks of just under 2 MB: PHP's allocator
// serves those from its 2 MB chunks and keeps the chunks for the next request
// (the worker's memory stays at its peak), while writing them costs little CPU.
$rows = [];
for ($i = 0; $i < {alloc_mb}; $i += 2) {{
    $rows[] = str_repeat(chr(97 + $i % 26), 2000000);
}}

// The "database call": lognormal, median {wait_ms} ms, sigma 0.5, at most 16x that.
$u1 = (mt_rand() + 1) / (mt_getrandmax() + 2);
$u2 = mt_rand() / mt_getrandmax();
$z = sqrt(-2.0 * log($u1)) * cos(2.0 * M_PI * $u2);
$wait = (int) min({wait_cap_us}, {wait_us} * exp(0.5 * $z));
if (!isset($_GET['nowait'])) {{
    usleep($wait);
}}

header('Content-Type: text/plain');
echo "ok route=$route fields=$fields blocks=", count($rows), " wait_us=$wait\n";
"#,
        modules = MODULES,
        per_route = MODULES_PER_ROUTE,
        per_module = PER_MODULE,
        alloc_mb = ALLOC_MB,
        wait_ms = wait_ms(),
        wait_us = wait_ms() * 1000,
        wait_cap_us = wait_ms() * 16_000,
    )
}

/// `n` GETs of `target`, `at_once` concurrently per round; the latency of
/// each, in send order. A failed request panics: the app figures are
/// measured on a healthy pool.
pub(crate) async fn rounds(target: &Target, n: usize, at_once: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    let mut left = n;
    while left > 0 {
        let k = left.min(at_once);
        let handles: Vec<_> = (0..k)
            .map(|_| {
                let t = target.clone();
                tokio::spawn(async move {
                    let start = Instant::now();
                    let o = fpm_loadgen::get(&t).await;
                    (o, start.elapsed())
                })
            })
            .collect();
        for h in handles {
            let (o, d) = h.await.unwrap();
            assert!(
                matches!(o, Outcome::Status(200)),
                "app request failed: {o:?}"
            );
            out.push(d);
        }
        left -= k;
    }
    out
}
