//! The load generator and driver behind `scripts/bench`: runs one workload through
//! every path (direct to the upstream, a bare TCP relay as a reference, latchkey's
//! daemon endpoint, `latchkey stdio`, mcp-remote, mcp-proxy) in one run and prints the
//! figures as Markdown tables, with ratios against the direct connection. The paths to
//! one upstream are measured interleaved (see "Measurements"). It measures; it asserts
//! nothing about time.
//!
//! Usage: mcp-bench --latchkey BIN --fast BIN --browser SCRIPT [--smoke]
//!        [--everything ENTRY.js] [--mcp-remote ENTRY.js] [--mcp-proxy BIN]
//!        [--relay TCP-RELAY-BIN] [--out FILE]
//!        mcp-bench load URL CLIENTS SECS   (only the load, for profiling)
//!
//! Every process it starts is killed before it returns (and on a panic, by
//! `kill_on_drop`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::oneshot;

type BoxErr = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxErr>;

fn err(msg: impl Into<String>) -> BoxErr {
    msg.into().into()
}

const PROTOCOL: &str = "2025-06-18";
const DIRECT_TOKEN: &str = "bench-direct-token";
/// Access tokens live this long, so latchkey refreshes every few seconds during a run.
const TOKEN_LIFETIME: u64 = 4;
/// Linux's USER_HZ: the unit of utime and stime in /proc/<pid>/stat.
const TICKS_PER_SEC: f64 = 100.0;
/// An HTTP client idle this long reconnects before its next turn (below Node's 5 s
/// keep-alive timeout, so that server-everything never closes it under a request).
const RECONNECT_AFTER_IDLE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
struct Args {
    latchkey: PathBuf,
    fast: PathBuf,
    browser: PathBuf,
    smoke: bool,
    everything: Option<PathBuf>,
    mcp_remote: Option<PathBuf>,
    mcp_proxy: Option<PathBuf>,
    relay: Option<PathBuf>,
    out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Untimed calls on each path before the first latency round.
    warmup: usize,
    /// Latency rounds; in each, every path makes `calls_per_round` timed calls.
    rounds: usize,
    calls_per_round: usize,
    /// Untimed calls at the start of each path's turn in a round.
    round_warmup: usize,
    /// Throughput slices per client count; in each, every path runs `slice_secs`.
    slices: usize,
    slice_secs: f64,
    cold_runs: usize,
    streams: usize,
    big_bytes: u64,
}

fn parse_args() -> Res<Args> {
    let mut a = Args {
        latchkey: PathBuf::new(),
        fast: PathBuf::new(),
        browser: PathBuf::new(),
        smoke: false,
        everything: None,
        mcp_remote: None,
        mcp_proxy: None,
        relay: None,
        out: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .map(PathBuf::from)
                .ok_or_else(|| err(format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--latchkey" => a.latchkey = value()?,
            "--fast" => a.fast = value()?,
            "--browser" => a.browser = value()?,
            "--everything" => a.everything = Some(value()?),
            "--mcp-remote" => a.mcp_remote = Some(value()?),
            "--mcp-proxy" => a.mcp_proxy = Some(value()?),
            "--relay" => a.relay = Some(value()?),
            "--out" => a.out = Some(value()?),
            "--smoke" => a.smoke = true,
            other => return Err(err(format!("unknown argument {other:?}"))),
        }
    }
    if a.latchkey.as_os_str().is_empty()
        || a.fast.as_os_str().is_empty()
        || a.browser.as_os_str().is_empty()
    {
        return Err(err(
            "usage: mcp-bench --latchkey BIN --fast BIN --browser SCRIPT [--smoke] [--everything ENTRY.js] [--mcp-remote ENTRY.js] [--mcp-proxy BIN] [--relay BIN] [--out FILE]",
        ));
    }
    Ok(a)
}

// ---------------------------------------------------------------------------------
// Processes

/// Every child started, killed at the end (and on drop).
#[derive(Debug, Default)]
struct Procs(Mutex<Vec<Child>>);

impl Procs {
    fn keep(&self, child: Child) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(child);
    }
    async fn kill_all(&self) {
        let children: Vec<Child> =
            std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        for mut child in children {
            let _ = child.kill().await;
        }
    }
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// utime + stime of `pid`, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    ticks as f64 / TICKS_PER_SEC
}

fn free_addr() -> Res<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

async fn wait_listening(addr: SocketAddr, child: &mut Child) -> Res<()> {
    for _ in 0..500 {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            return Err(err(format!(
                "process exited before listening on {addr}: {status}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(err(format!("nothing listening on {addr} after 5 s")))
}

/// Starts `mcp-fast` and reads the URL (and issuer) it prints.
/// `dpop`: the DPoP algorithm its authorization server offers (and binds tokens with).
async fn start_fast(
    args: &Args,
    procs: &Procs,
    protected: bool,
    dpop: Option<&str>,
) -> Res<(String, u32)> {
    let mut cmd = Command::new(&args.fast);
    if protected {
        cmd.args([
            "--protected",
            "--token-lifetime",
            &TOKEN_LIFETIME.to_string(),
            "--direct-token",
            DIRECT_TOKEN,
        ]);
    }
    if let Some(alg) = dpop {
        cmd.args(["--dpop", alg]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or_else(|| err("mcp-fast has no pid"))?;
    let stdout = child.stdout.take().ok_or_else(|| err("piped stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let url = lines
        .next_line()
        .await?
        .ok_or_else(|| err("mcp-fast printed nothing"))?;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    procs.keep(child);
    Ok((url, pid))
}

/// Starts server-everything (the official SDK's example server) in Streamable HTTP mode.
async fn start_everything(entry: &Path, procs: &Procs) -> Res<String> {
    for _ in 0..5 {
        let port = free_addr()?.port();
        let mut child = Command::new("node")
            .arg(entry)
            .arg("streamableHttp")
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stderr = child.stderr.take().ok_or_else(|| err("piped stderr"))?;
        let mut lines = BufReader::new(stderr).lines();
        let listening = format!("port {port}");
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains(&listening) {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        if ready {
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            procs.keep(child);
            return Ok(format!("http://127.0.0.1:{port}/mcp"));
        }
    }
    Err(err("server-everything did not start"))
}

struct Env {
    dir: PathBuf,
    args: Args,
}

impl Env {
    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("XDG_RUNTIME_DIR", self.dir.join("run"))
            .env("XDG_STATE_HOME", self.dir.join("state"))
            .env("XDG_CONFIG_HOME", self.dir.join("config"))
            .env("MCP_REMOTE_CONFIG_DIR", self.dir.join("mcp-remote"))
            .env("BROWSER", format!("node {}", self.args.browser.display()))
            .kill_on_drop(true);
        cmd
    }

    fn write_config(&self, name: &str, servers: &[(String, String)]) -> Res<PathBuf> {
        let mut toml = format!(
            "store = \"file\"\nstate_dir = \"{}\"\n",
            self.dir.join("state").display()
        );
        for (server, url) in servers {
            let _ = write!(
                toml,
                "\n[servers.{server}]\nurl = \"{url}\"\ntransport = \"streamable-http\"\n"
            );
        }
        let path = self.dir.join(name);
        std::fs::write(&path, toml)?;
        Ok(path)
    }

    /// `latchkey serve` on a free port; returns its address and pid.
    async fn daemon(&self, config: &Path, procs: &Procs, log: &str) -> Res<(SocketAddr, u32)> {
        let addr = free_addr()?;
        let log = std::fs::File::create(self.dir.join(log))?;
        let mut child = self
            .command(&self.args.latchkey)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--listen")
            .arg(addr.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let pid = child.id().ok_or_else(|| err("daemon has no pid"))?;
        wait_listening(addr, &mut child).await?;
        procs.keep(child);
        Ok((addr, pid))
    }
}

// ---------------------------------------------------------------------------------
// Clients

#[derive(Debug, Clone)]
struct HttpTarget {
    addr: SocketAddr,
    path: String,
    bearer: Option<String>,
}

impl HttpTarget {
    fn from_url(url: &str, bearer: Option<String>) -> Res<Self> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| err(format!("not http: {url}")))?;
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        Ok(Self {
            addr: host.parse()?,
            path: format!("/{path}"),
            bearer,
        })
    }
}

struct HttpSession {
    target: HttpTarget,
    host: HeaderValue,
    send: SendRequest<Full<Bytes>>,
    session: Option<HeaderValue>,
    bearer: Option<HeaderValue>,
    last_used: Instant,
}

impl HttpSession {
    async fn open(target: &HttpTarget) -> Res<Self> {
        let mut s = Self::connect(target).await?;
        let init = s.post(&initialize(0)).await?;
        if init.get("result").is_none() {
            return Err(err(format!("initialize failed: {init}")));
        }
        s.notify(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
            .await?;
        Ok(s)
    }

    async fn dial(addr: SocketAddr) -> Res<SendRequest<Full<Bytes>>> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(send)
    }

    async fn connect(target: &HttpTarget) -> Res<Self> {
        let send = Self::dial(target.addr).await?;
        Ok(Self {
            host: HeaderValue::from_str(&target.addr.to_string())?,
            bearer: target
                .bearer
                .as_ref()
                .map(|t| HeaderValue::from_str(&format!("Bearer {t}")))
                .transpose()?,
            target: target.clone(),
            send,
            session: None,
            last_used: Instant::now(),
        })
    }

    /// A new connection (same MCP session) if the server has closed this one, or if it
    /// has idled long enough that the server may be closing it as we send (Node's
    /// keep-alive timeout is 5 s): the paths take turns, so a client can wait seconds
    /// between calls.
    async fn keep_fresh(&mut self) -> Res<()> {
        if self.send.is_closed() || self.last_used.elapsed() > RECONNECT_AFTER_IDLE {
            self.send = Self::dial(self.target.addr).await?;
            self.last_used = Instant::now();
        }
        Ok(())
    }

    fn request(&self, body: &str) -> Res<Request<Full<Bytes>>> {
        let mut req = Request::post(self.target.path.as_str())
            .header(header::HOST, self.host.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream")
            .header("mcp-protocol-version", PROTOCOL)
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))?;
        if let Some(s) = &self.session {
            req.headers_mut().insert("mcp-session-id", s.clone());
        }
        if let Some(b) = &self.bearer {
            req.headers_mut().insert(header::AUTHORIZATION, b.clone());
        }
        Ok(req)
    }

    async fn notify(&mut self, body: &str) -> Res<()> {
        let req = self.request(body)?;
        self.send.ready().await?;
        let resp = self.send.send_request(req).await?;
        let status = resp.status();
        resp.into_body().collect().await?;
        self.last_used = Instant::now();
        if !status.is_success() {
            return Err(err(format!("notification answered {status}")));
        }
        Ok(())
    }

    async fn post(&mut self, body: &str) -> Res<Value> {
        let req = self.request(body)?;
        self.send.ready().await?;
        let resp = self.send.send_request(req).await?;
        let status = resp.status();
        if let Some(s) = resp.headers().get("mcp-session-id") {
            self.session = Some(s.clone());
        }
        let sse = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let bytes = resp.into_body().collect().await?.to_bytes();
        self.last_used = Instant::now();
        if !status.is_success() {
            return Err(err(format!(
                "{status}: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        if sse {
            // The reply is the `data:` of an event on this stream.
            for line in bytes.split(|&b| b == b'\n') {
                if let Some(data) = line.strip_prefix(b"data:") {
                    let v: Value = serde_json::from_slice(data.trim_ascii())?;
                    if v.get("id").is_some() && v.get("method").is_none() {
                        return Ok(v);
                    }
                }
            }
            return Err(err("SSE reply without a response"));
        }
        Ok(serde_json::from_slice(&bytes)?)
    }
}

fn initialize(id: u64) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"initialize","params":{{"protocolVersion":"{PROTOCOL}","capabilities":{{}},"clientInfo":{{"name":"mcp-bench","version":"0.1.0"}}}}}}"#
    )
}

fn echo_call(id: u64) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"message":"hello {id}"}}}}}}"#
    )
}

fn tools_list(id: u64) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list"}}"#)
}

/// A stdio MCP bridge: one process, newline-delimited JSON-RPC, any number of calls in
/// flight (replies are matched by id).
struct StdioConn {
    stdin: tokio::sync::Mutex<ChildStdin>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Value>>>,
    next: AtomicU64,
    pid: u32,
}

impl StdioConn {
    async fn spawn(mut cmd: Command, procs: &Procs, stderr_log: &Path) -> Res<Arc<Self>> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(stderr_log)?)
            .spawn()?;
        let pid = child.id().ok_or_else(|| err("bridge has no pid"))?;
        let stdin = child.stdin.take().ok_or_else(|| err("piped stdin"))?;
        let stdout = child.stdout.take().ok_or_else(|| err("piped stdout"))?;
        procs.keep(child);
        let conn = Arc::new(Self {
            stdin: tokio::sync::Mutex::new(stdin),
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            pid,
        });
        let reader = conn.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if v.get("method").is_some() {
                    if let Some(id) = v.get("id") {
                        // A request from the server (ping, roots/list): answer it empty.
                        let reply = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{}}}}"#);
                        let _ = reader.write_line(&reply).await;
                    }
                    continue;
                }
                if let Some(id) = v.get("id").and_then(Value::as_u64) {
                    let tx = reader
                        .pending
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&id);
                    if let Some(tx) = tx {
                        let _ = tx.send(v);
                    }
                }
            }
        });
        Ok(conn)
    }

    async fn write_line(&self, line: &str) -> Res<()> {
        let mut stdin = self.stdin.lock().await;
        stdin.write_all(line.as_bytes()).await?;
        stdin.write_all(b"\n").await?;
        stdin.flush().await?;
        Ok(())
    }

    async fn call(&self, make: impl Fn(u64) -> String) -> Res<Value> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        self.write_line(&make(id)).await?;
        Ok(tokio::time::timeout(Duration::from_secs(60), rx)
            .await
            .map_err(|_| err("stdio reply timed out"))??)
    }

    async fn handshake(&self) -> Res<()> {
        let init = self.call(initialize).await?;
        if init.get("result").is_none() {
            return Err(err(format!("initialize failed: {init}")));
        }
        self.write_line(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
            .await
    }
}

/// One client's way to the upstream.
#[derive(Clone)]
enum Route {
    Http(HttpTarget),
    Stdio(Arc<StdioConn>),
}

enum Client {
    Http(Box<HttpSession>, u64),
    Stdio(Arc<StdioConn>),
}

impl Client {
    async fn open(path: &Route) -> Res<Self> {
        Ok(match path {
            Route::Http(t) => Client::Http(Box::new(HttpSession::open(t).await?), 1),
            Route::Stdio(c) => Client::Stdio(c.clone()),
        })
    }

    /// Before a turn: see `HttpSession::keep_fresh`.
    async fn keep_fresh(&mut self) -> Res<()> {
        match self {
            Client::Http(s, _) => s.keep_fresh().await,
            Client::Stdio(_) => Ok(()),
        }
    }

    async fn echo(&mut self) -> Res<()> {
        let reply = match self {
            Client::Http(s, id) => {
                *id += 1;
                s.post(&echo_call(*id)).await?
            }
            Client::Stdio(c) => c.call(echo_call).await?,
        };
        if reply.get("result").is_none() {
            return Err(err(format!("tools/call failed: {reply}")));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// Measurements
//
// The paths to one upstream are measured side by side, interleaved: in each round of
// the latency figure and each slice of the throughput figure, every path takes its turn
// (in an order shuffled per round), with its connections and processes kept from one
// turn to the next. The machine's load drifts over minutes; interleaving makes the
// drift hit every path alike, so that the differences against `direct` hold still.

#[derive(Debug, Default, Clone)]
struct Row {
    upstream: String,
    path: String,
    note: String,
    p50_us: f64,
    p99_us: f64,
    /// The p50 of each latency round, in round order.
    round_p50_us: Vec<f64>,
    rps: [f64; 3],
    cpu_ms_per_10k: Option<f64>,
    cold_ms: Option<f64>,
    rss_kb: Option<u64>,
    errors: u64,
    failed: Option<String>,
}

impl Row {
    fn new(up: &Upstream, path: &str, note: &str) -> Self {
        Self {
            upstream: up.name.into(),
            path: path.into(),
            note: note.into(),
            ..Self::default()
        }
    }
}

const CONCURRENCY: [usize; 3] = [1, 16, 64];

/// One path to an upstream under measurement: its row in the table, how a client
/// reaches it (none once it has failed), and the process its CPU time is charged to.
struct Lane {
    row: Row,
    route: Option<Route>,
    cpu_pid: Option<u32>,
    /// A bridge's failure is recorded in its row; any other ends the run.
    may_fail: bool,
}

impl Lane {
    fn new(row: Row, route: Route, cpu_pid: Option<u32>) -> Self {
        Self {
            row,
            route: Some(route),
            cpu_pid,
            may_fail: false,
        }
    }

    /// Takes the lane out of the run, or ends the run if it may not fail.
    fn fail(&mut self, e: BoxErr) -> Res<()> {
        progress(&format!(
            "{}: {} failed: {e}",
            self.row.upstream, self.row.path
        ));
        if !self.may_fail {
            return Err(e);
        }
        self.row.failed = Some(e.to_string());
        self.route = None;
        Ok(())
    }
}

/// The order in which the lanes take their turns in round `round`: a different
/// (deterministic) shuffle each round, so that no lane always follows the same one
/// (and inherits, say, a node peer's garbage collection after its turn).
fn turn_order(lanes: usize, round: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..lanes).collect();
    let mut x = (round as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for i in (1..lanes).rev() {
        // splitmix64's finaliser.
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
}

/// The `q` quantile of sorted samples.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { quantile(&v, 0.5) }
}

/// `warmup` calls, then `calls` calls timed one by one (µs).
async fn timed_calls(client: &mut Client, warmup: usize, calls: usize) -> Res<Vec<f64>> {
    for _ in 0..warmup {
        client.echo().await?;
    }
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        client.echo().await?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(samples)
}

/// Latency of sequential calls: one client per lane, warmed up, then `plan.rounds`
/// rounds in which each lane in turn makes `plan.calls_per_round` timed calls (after a
/// few untimed ones). p50 and p99 are over all of a lane's samples.
async fn interleaved_latency(lanes: &mut [Lane], plan: &Plan) -> Res<()> {
    let mut clients = Vec::with_capacity(lanes.len());
    for lane in lanes.iter_mut() {
        let opened = match &lane.route {
            Some(route) => async {
                let mut client = Client::open(route).await?;
                timed_calls(&mut client, plan.warmup, 0).await?;
                Ok(client)
            }
            .await
            .map(Some),
            None => Ok(None),
        };
        clients.push(opened.or_else(|e| lane.fail(e).map(|()| None))?);
    }
    let mut samples = vec![Vec::new(); lanes.len()];
    for round in 0..plan.rounds {
        for i in turn_order(lanes.len(), round) {
            let Some(client) = &mut clients[i] else {
                continue;
            };
            let turn = async {
                client.keep_fresh().await?;
                timed_calls(client, plan.round_warmup, plan.calls_per_round).await
            };
            match turn.await {
                Ok(mut s) => {
                    samples[i].extend_from_slice(&s);
                    s.sort_by(f64::total_cmp);
                    lanes[i].row.round_p50_us.push(quantile(&s, 0.5));
                }
                Err(e) => {
                    clients[i] = None;
                    lanes[i].fail(e)?;
                }
            }
        }
    }
    for (lane, mut s) in lanes.iter_mut().zip(samples) {
        if lane.route.is_some() && !s.is_empty() {
            s.sort_by(f64::total_cmp);
            lane.row.p50_us = quantile(&s, 0.50);
            lane.row.p99_us = quantile(&s, 0.99);
        }
    }
    Ok(())
}

async fn open_clients(route: &Route, n: usize) -> Res<Vec<Client>> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(Client::open(route).await?);
    }
    Ok(clients)
}

async fn keep_fresh(clients: &mut [Client]) -> Res<()> {
    for client in clients {
        client.keep_fresh().await?;
    }
    Ok(())
}

/// What the clients of one lane did in one throughput slice; the clients come back.
struct Slice {
    clients: Vec<Client>,
    rps: f64,
    ok: u64,
    failed: u64,
}

/// `clients` calling back to back for `secs`; then waits for the calls in flight.
async fn run_slice(clients: Vec<Client>, secs: f64) -> Res<Slice> {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    match client.echo().await {
                        Ok(()) => ok += 1,
                        Err(_) => {
                            failed += 1;
                            // A dead connection fails at once, without a pending
                            // await: yield, so that the slice's timer still fires.
                            tokio::task::yield_now().await;
                        }
                    }
                }
                (client, ok, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut slice = Slice {
        clients: Vec::with_capacity(tasks.len()),
        rps: 0.0,
        ok: 0,
        failed: 0,
    };
    for t in tasks {
        let (client, ok, failed) = t.await?;
        slice.clients.push(client);
        slice.ok += ok;
        slice.failed += failed;
    }
    slice.rps = slice.ok as f64 / start.elapsed().as_secs_f64();
    Ok(slice)
}

/// Throughput at each client count: each lane opens its clients once per count, then
/// `plan.slices` slices in which each lane in turn runs for `plan.slice_secs`; the
/// figure is the median slice. CPU per 10,000 calls is the lane's process's CPU time
/// during the lane's own slices, over the calls answered in them.
async fn interleaved_throughput(lanes: &mut [Lane], plan: &Plan) -> Res<()> {
    let mut cpu = vec![(0.0, 0u64); lanes.len()];
    for (level, &n) in CONCURRENCY.iter().enumerate() {
        let mut pools = Vec::with_capacity(lanes.len());
        for lane in lanes.iter_mut() {
            let opened = match &lane.route {
                Some(route) => open_clients(route, n).await.map(Some),
                None => Ok(None),
            };
            pools.push(opened.or_else(|e| lane.fail(e).map(|()| None))?);
        }
        let mut rates = vec![Vec::new(); lanes.len()];
        for slice in 0..plan.slices {
            for i in turn_order(lanes.len(), level * plan.slices + slice) {
                let Some(mut clients) = pools[i].take() else {
                    continue;
                };
                if let Err(e) = keep_fresh(&mut clients).await {
                    lanes[i].fail(e)?;
                    continue;
                }
                let cpu0 = lanes[i].cpu_pid.map(cpu_secs);
                let s = run_slice(clients, plan.slice_secs).await?;
                if let (Some(pid), Some(c0)) = (lanes[i].cpu_pid, cpu0) {
                    cpu[i].0 += cpu_secs(pid) - c0;
                    cpu[i].1 += s.ok;
                }
                rates[i].push(s.rps);
                lanes[i].row.errors += s.failed;
                pools[i] = Some(s.clients);
            }
        }
        for (lane, r) in lanes.iter_mut().zip(rates) {
            lane.row.rps[level] = median(r);
        }
    }
    for (lane, (secs, calls)) in lanes.iter_mut().zip(cpu) {
        if lane.cpu_pid.is_some() && lane.route.is_some() {
            lane.row.cpu_ms_per_10k = Some(secs * 1000.0 * 10_000.0 / calls.max(1) as f64);
        }
    }
    Ok(())
}

/// Spawn → initialize → tools/list answered, over stdio; median of `runs` (ms), and
/// the RSS of the last bridge once it has answered.
async fn cold_stdio(make: &dyn Fn() -> Command, runs: usize, log: &Path) -> Res<(f64, u64)> {
    let mut times = Vec::new();
    let mut rss = 0;
    for _ in 0..runs {
        let local = Procs::default();
        let t = Instant::now();
        let conn = StdioConn::spawn(make(), &local, log).await?;
        conn.handshake().await?;
        let list = conn.call(tools_list).await?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if list.get("result").is_none() {
            return Err(err(format!("tools/list failed: {list}")));
        }
        times.push(ms);
        tokio::time::sleep(Duration::from_millis(300)).await;
        rss = rss_kb(conn.pid);
        local.kill_all().await;
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], rss))
}

/// New connection → initialize → tools/list answered, directly over HTTP (the
/// upstream's own part of a cold start); median of `runs` (ms).
async fn cold_http(target: &HttpTarget, runs: usize) -> Res<f64> {
    let mut times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let mut s = HttpSession::open(target).await?;
        let list = s.post(&tools_list(1)).await?;
        if list.get("result").is_none() {
            return Err(err(format!("tools/list failed: {list}")));
        }
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Opens a GET SSE stream and waits for its headers; returns the response body.
async fn open_stream(target: &HttpTarget, path: &str) -> Res<hyper::body::Incoming> {
    let stream = TcpStream::connect(target.addr).await?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(header::HOST, target.addr.to_string())
        .header(header::ACCEPT, "text/event-stream")
        .header("mcp-protocol-version", PROTOCOL)
        .header("mcp-session-id", "fast-0")
        .body(Empty::new())?;
    let resp = send.send_request(req).await?;
    if !resp.status().is_success() {
        return Err(err(format!("GET {path}: {}", resp.status())));
    }
    Ok(resp.into_body())
}

#[derive(Debug, Default)]
struct Memory {
    idle20_kb: u64,
    streams: usize,
    streams_before_kb: u64,
    streams_kb: u64,
    big_mb: f64,
    big_before_kb: u64,
    big_growth_kb: u64,
    big_mb_per_s: f64,
    direct_big_mb_per_s: f64,
}

async fn memory(env: &Env, fast_url: &str, plan: &Plan) -> Res<Memory> {
    let mut m = Memory {
        streams: plan.streams,
        big_mb: plan.big_bytes as f64 / 1e6,
        ..Memory::default()
    };
    let fast = HttpTarget::from_url(fast_url, None)?;
    // Idle, 20 servers.
    {
        let procs = Procs::default();
        let servers: Vec<(String, String)> = (1..=20)
            .map(|i| (format!("s{i:02}"), fast_url.to_owned()))
            .collect();
        let config = env.write_config("idle20.toml", &servers)?;
        let (_, pid) = env.daemon(&config, &procs, "daemon-idle20.log").await?;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        m.idle20_kb = rss_kb(pid);
        procs.kill_all().await;
    }
    let origin = fast_url.trim_end_matches("/mcp");
    let big_url = format!("{origin}/stream/{}", plan.big_bytes);
    let servers = vec![
        ("fast".to_owned(), fast_url.to_owned()),
        ("big".to_owned(), big_url),
    ];
    let config = env.write_config("memory.toml", &servers)?;
    // Open streams.
    {
        let procs = Procs::default();
        let (addr, pid) = env.daemon(&config, &procs, "daemon-streams.log").await?;
        let via = HttpTarget {
            addr,
            path: "/fast".into(),
            bearer: None,
        };
        // One call first, so the baseline includes a warmed-up upstream connection pool.
        Client::open(&Route::Http(via.clone()))
            .await?
            .echo()
            .await?;
        m.streams_before_kb = rss_kb(pid);
        let mut bodies = Vec::with_capacity(plan.streams);
        for _ in 0..plan.streams {
            let mut body = open_stream(&via, "/fast").await?;
            // The upstream's first comment has come through.
            body.frame().await.ok_or_else(|| err("stream ended"))??;
            bodies.push(body);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        m.streams_kb = rss_kb(pid);
        drop(bodies);
        procs.kill_all().await;
    }
    // One big SSE response.
    {
        let procs = Procs::default();
        let (addr, pid) = env.daemon(&config, &procs, "daemon-big.log").await?;
        let via = HttpTarget {
            addr,
            path: "/big".into(),
            bearer: None,
        };
        Client::open(&Route::Http(HttpTarget {
            addr,
            path: "/fast".into(),
            bearer: None,
        }))
        .await?
        .echo()
        .await?;
        m.big_before_kb = rss_kb(pid);
        let peak = Arc::new(AtomicU64::new(m.big_before_kb));
        let done = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (peak, done) = (peak.clone(), done.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_kb(pid), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        let t = Instant::now();
        let got = drain(open_stream(&via, "/big").await?).await?;
        let secs = t.elapsed().as_secs_f64();
        done.store(true, Ordering::Relaxed);
        sampler.await?;
        peak.fetch_max(rss_kb(pid), Ordering::Relaxed);
        if got != plan.big_bytes {
            return Err(err(format!(
                "big stream: {got} of {} bytes",
                plan.big_bytes
            )));
        }
        m.big_growth_kb = peak.load(Ordering::Relaxed).saturating_sub(m.big_before_kb);
        m.big_mb_per_s = got as f64 / 1e6 / secs;
        let t = Instant::now();
        let big_path = format!("/stream/{}", plan.big_bytes);
        let got = drain(open_stream(&fast, &big_path).await?).await?;
        m.direct_big_mb_per_s = got as f64 / 1e6 / t.elapsed().as_secs_f64();
        procs.kill_all().await;
    }
    Ok(m)
}

async fn drain(mut body: hyper::body::Incoming) -> Res<u64> {
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            got += data.len() as u64;
        }
    }
    Ok(got)
}

// ---------------------------------------------------------------------------------
// The run

/// `mcp-bench load URL CLIENTS SECS`: only the load, against one Streamable HTTP URL
/// (for profiling a process while it runs).
async fn load_only(mut argv: impl Iterator<Item = String>) -> Res<()> {
    let url = argv.next().ok_or_else(|| err("load URL CLIENTS SECS"))?;
    let clients: usize = argv
        .next()
        .ok_or_else(|| err("load URL CLIENTS SECS"))?
        .parse()?;
    let secs: f64 = argv
        .next()
        .ok_or_else(|| err("load URL CLIENTS SECS"))?
        .parse()?;
    let route = Route::Http(HttpTarget::from_url(&url, None)?);
    let s = run_slice(open_clients(&route, clients).await?, secs).await?;
    println!("{:.0} calls/s ({} calls, {} failed)", s.rps, s.ok, s.failed);
    Ok(())
}

#[tokio::main]
async fn main() {
    if std::env::args().nth(1).as_deref() == Some("load") {
        if let Err(e) = load_only(std::env::args().skip(2)).await {
            eprintln!("mcp-bench: {e}");
            std::process::exit(1);
        }
        return;
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mcp-bench: {e}");
            std::process::exit(2);
        }
    };
    let procs = Procs::default();
    let result = run(&args, &procs).await;
    procs.kill_all().await;
    match result {
        Ok(report) => {
            println!("{report}");
            if let Some(out) = &args.out
                && let Err(e) = std::fs::write(out, &report)
            {
                eprintln!("mcp-bench: cannot write {}: {e}", out.display());
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("mcp-bench: {e}");
            std::process::exit(1);
        }
    }
}

fn progress(msg: &str) {
    eprintln!("mcp-bench: {msg}");
}

async fn run(args: &Args, procs: &Procs) -> Res<String> {
    let plan = if args.smoke {
        Plan {
            warmup: 20,
            rounds: 3,
            calls_per_round: 100,
            round_warmup: 5,
            slices: 2,
            slice_secs: 0.1,
            cold_runs: 1,
            streams: 50,
            big_bytes: 4 << 20,
        }
    } else {
        Plan {
            warmup: 500,
            rounds: 10,
            calls_per_round: 300,
            round_warmup: 20,
            slices: 6,
            slice_secs: 0.5,
            cold_runs: 5,
            streams: 1000,
            big_bytes: 200 << 20,
        }
    };
    let dir = std::env::temp_dir().join(format!("latchkey-bench-{}", std::process::id()));
    for sub in ["run", "state", "config", "mcp-remote"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let env = Env {
        dir: dir.clone(),
        args: args.clone(),
    };
    let result = run_in(&env, procs, &plan).await;
    procs.kill_all().await;
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        progress(&format!("logs kept in {}", dir.display()));
    }
    result
}

/// A stdio bridge between the client and the upstream.
#[derive(Debug, Clone, Copy)]
enum Bridge<'a> {
    LatchkeyStdio,
    /// mcp-remote's entry script.
    McpRemote(&'a Path),
    /// mcp-proxy's executable.
    McpProxy(&'a Path),
}

impl Bridge<'_> {
    /// The bridges this run has.
    fn all(args: &Args, has_stdio: bool) -> Vec<Bridge<'_>> {
        let mut bridges = Vec::new();
        if has_stdio {
            bridges.push(Bridge::LatchkeyStdio);
        }
        bridges.extend(args.mcp_remote.as_deref().map(Bridge::McpRemote));
        bridges.extend(args.mcp_proxy.as_deref().map(Bridge::McpProxy));
        bridges
    }

    fn name(self) -> &'static str {
        match self {
            Bridge::LatchkeyStdio => "latchkey stdio",
            Bridge::McpRemote(_) => "mcp-remote",
            Bridge::McpProxy(_) => "mcp-proxy",
        }
    }

    fn note(self, up: &Upstream) -> &'static str {
        match self {
            Bridge::McpRemote(_) | Bridge::McpProxy(_) if up.bearer.is_some() => {
                "static bearer header, no OAuth"
            }
            _ => "",
        }
    }

    /// The command that starts this bridge to `up`.
    fn command(self, env: &Env, up: &Upstream, config: &Path) -> Command {
        let bearer = up.bearer.as_ref().map(|b| format!("Bearer {b}"));
        match self {
            Bridge::LatchkeyStdio => {
                let mut c = env.command(&env.args.latchkey);
                c.arg("stdio").arg(up.server).arg("--config").arg(config);
                c
            }
            Bridge::McpRemote(entry) => {
                let mut c = env.command(Path::new("node"));
                c.arg(entry)
                    .arg(&up.url)
                    .args(["--transport", "http-only", "--allow-http"]);
                if let Some(b) = bearer {
                    c.arg("--header").arg(format!("Authorization: {b}"));
                }
                c
            }
            Bridge::McpProxy(bin) => {
                let mut c = env.command(bin);
                c.args(["--transport", "streamablehttp", "--log-level", "WARNING"])
                    .arg(&up.url);
                if let Some(b) = bearer {
                    c.args(["-H", "Authorization"]).arg(b);
                }
                c
            }
        }
    }
}

struct Upstream {
    name: &'static str,
    url: String,
    /// The token a direct client sends.
    bearer: Option<String>,
    /// The server's name in latchkey's config.
    server: &'static str,
    pid: Option<u32>,
    /// Whether it gets the `tcp relay` reference row.
    relayed: bool,
}

/// What every upstream's lanes share: latchkey's config and daemon.
struct Latchkey {
    config: PathBuf,
    daemon_addr: SocketAddr,
    daemon_pid: u32,
    has_stdio: bool,
}

const RELAY_PATH: &str = "tcp relay (reference)";
const RELAY_NOTE: &str = "reference: a bare byte relay, one extra loopback hop";

/// Starts `tcp-relay` in front of `target`; returns its address and pid.
async fn start_relay(bin: &Path, target: SocketAddr, procs: &Procs) -> Res<(SocketAddr, u32)> {
    let mut child = Command::new(bin)
        .arg(target.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or_else(|| err("tcp-relay has no pid"))?;
    let stdout = child.stdout.take().ok_or_else(|| err("piped stdout"))?;
    let line = BufReader::new(stdout)
        .lines()
        .next_line()
        .await?
        .ok_or_else(|| err("tcp-relay printed nothing"))?;
    procs.keep(child);
    Ok((line.trim().parse()?, pid))
}

/// A bridge's lane: its cold start (fresh processes), then one process kept for the
/// measurement. A bridge that does not start gives a failed row.
async fn bridge_lane(
    env: &Env,
    up: &Upstream,
    lk: &Latchkey,
    bridge: Bridge<'_>,
    plan: &Plan,
    procs: &Procs,
) -> Res<Lane> {
    let log = env.dir.join(format!(
        "{}-{}.log",
        up.server,
        bridge.name().replace(' ', "-")
    ));
    let make = || bridge.command(env, up, &lk.config);
    let started: Res<(f64, u64, Arc<StdioConn>)> = async {
        let (cold, rss) = cold_stdio(&make, plan.cold_runs, &log).await?;
        let conn = StdioConn::spawn(make(), procs, &log).await?;
        conn.handshake().await?;
        Ok((cold, rss, conn))
    }
    .await;
    let mut lane = Lane {
        row: Row::new(up, bridge.name(), bridge.note(up)),
        route: None,
        cpu_pid: None,
        may_fail: true,
    };
    match started {
        Ok((cold, rss, conn)) => {
            lane.row.cold_ms = Some(cold);
            lane.row.rss_kb = Some(rss);
            lane.cpu_pid = Some(conn.pid);
            lane.route = Some(Route::Stdio(conn));
        }
        Err(e) => lane.fail(e)?,
    }
    Ok(lane)
}

/// Every path to `up`, started and ready: direct (with the upstream's own cold start),
/// the reference relay, the daemon, and each bridge (with its cold start and RSS).
async fn start_lanes(
    env: &Env,
    up: &Upstream,
    lk: &Latchkey,
    plan: &Plan,
    procs: &Procs,
) -> Res<Vec<Lane>> {
    let direct = HttpTarget::from_url(&up.url, up.bearer.clone())?;
    let mut lanes = Vec::new();
    let mut lane = Lane::new(
        Row::new(up, "direct", "upstream's own CPU"),
        Route::Http(direct.clone()),
        up.pid,
    );
    lane.row.cold_ms = Some(cold_http(&direct, plan.cold_runs.max(3)).await?);
    lanes.push(lane);
    if let Some(bin) = env.args.relay.as_deref().filter(|_| up.relayed) {
        let (addr, pid) = start_relay(bin, direct.addr, procs).await?;
        let via = HttpTarget {
            addr,
            ..direct.clone()
        };
        lanes.push(Lane::new(
            Row::new(up, RELAY_PATH, RELAY_NOTE),
            Route::Http(via),
            Some(pid),
        ));
    }
    let via = HttpTarget {
        addr: lk.daemon_addr,
        path: format!("/{}", up.server),
        bearer: None,
    };
    lanes.push(Lane::new(
        Row::new(up, "latchkey daemon", ""),
        Route::Http(via),
        Some(lk.daemon_pid),
    ));
    for bridge in Bridge::all(&env.args, lk.has_stdio) {
        lanes.push(bridge_lane(env, up, lk, bridge, plan, procs).await?);
    }
    Ok(lanes)
}

/// All the paths to one upstream, measured side by side; their rows.
async fn measure_upstream(env: &Env, up: &Upstream, lk: &Latchkey, plan: &Plan) -> Res<Vec<Row>> {
    let procs = Procs::default();
    let result = async {
        progress(&format!(
            "{}: starting the paths (and their cold starts)",
            up.name
        ));
        let mut lanes = start_lanes(env, up, lk, plan, &procs).await?;
        progress(&format!(
            "{}: latency, {} paths interleaved",
            up.name,
            lanes.len()
        ));
        interleaved_latency(&mut lanes, plan).await?;
        progress(&format!(
            "{}: throughput, {} paths interleaved",
            up.name,
            lanes.len()
        ));
        interleaved_throughput(&mut lanes, plan).await?;
        Ok(lanes.into_iter().map(|l| l.row).collect())
    }
    .await;
    procs.kill_all().await;
    result
}

async fn run_in(env: &Env, procs: &Procs, plan: &Plan) -> Res<String> {
    let args = &env.args;
    let (fast_url, fast_pid) = start_fast(args, procs, false, None).await?;
    let (oauth_url, oauth_pid) = start_fast(args, procs, true, None).await?;
    let (eddsa_url, eddsa_pid) = start_fast(args, procs, true, Some("EdDSA")).await?;
    let (es256_url, es256_pid) = start_fast(args, procs, true, Some("ES256")).await?;
    let mut upstreams = vec![
        Upstream {
            name: "fast",
            url: fast_url.clone(),
            bearer: None,
            server: "fast",
            pid: Some(fast_pid),
            relayed: true,
        },
        Upstream {
            name: "fast + OAuth",
            url: oauth_url.clone(),
            bearer: Some(DIRECT_TOKEN.into()),
            server: "fast-oauth",
            pid: Some(oauth_pid),
            relayed: true,
        },
        // DPoP-bound tokens: a proof signed per request (the direct client sends a
        // plain bearer token, so its row is the same as above).
        Upstream {
            name: "fast + OAuth + DPoP (EdDSA)",
            url: eddsa_url,
            bearer: Some(DIRECT_TOKEN.into()),
            server: "fast-dpop-eddsa",
            pid: Some(eddsa_pid),
            relayed: false,
        },
        Upstream {
            name: "fast + OAuth + DPoP (ES256)",
            url: es256_url,
            bearer: Some(DIRECT_TOKEN.into()),
            server: "fast-dpop-es256",
            pid: Some(es256_pid),
            relayed: false,
        },
    ];
    if let Some(entry) = &args.everything {
        progress("starting server-everything");
        let url = start_everything(entry, procs).await?;
        upstreams.push(Upstream {
            name: "server-everything",
            url,
            bearer: None,
            server: "everything",
            pid: None,
            relayed: false,
        });
    }
    let servers: Vec<(String, String)> = upstreams
        .iter()
        .map(|u| (u.server.to_owned(), u.url.clone()))
        .collect();
    let config = env.write_config("latchkey.toml", &servers)?;

    for server in ["fast-oauth", "fast-dpop-eddsa", "fast-dpop-es256"] {
        progress(&format!(
            "latchkey login {server} (tokens stored before the run)"
        ));
        let status = tokio::time::timeout(
            Duration::from_secs(60),
            env.command(&args.latchkey)
                .arg("login")
                .arg(server)
                .arg("--config")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(
                    env.dir.join(format!("login-{server}.log")),
                )?)
                .status(),
        )
        .await
        .map_err(|_| err("latchkey login timed out"))??;
        if !status.success() {
            return Err(err(format!("latchkey login {server} failed: {status}")));
        }
    }
    let grants_before = grants(&oauth_url).await?;

    let (daemon_addr, daemon_pid) = env.daemon(&config, procs, "daemon.log").await?;
    let has_stdio = env
        .command(&args.latchkey)
        .args(["stdio", "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success());
    let lk = Latchkey {
        config,
        daemon_addr,
        daemon_pid,
        has_stdio,
    };

    let mut rows = Vec::new();
    for up in &upstreams {
        rows.extend(measure_upstream(env, up, &lk, plan).await?);
    }
    let grants_after = grants(&oauth_url).await?;
    progress("memory");
    let mem = memory(env, &fast_url, plan).await?;
    let daemon_log = std::fs::read_to_string(env.dir.join("daemon.log")).unwrap_or_default();
    let daemon_rss = rss_kb(daemon_pid);
    Ok(report(
        plan,
        &rows,
        &mem,
        has_stdio,
        grants_before,
        grants_after,
        daemon_rss,
        &daemon_log,
    ))
}

/// Token requests so far at the protected upstream's authorization server, by grant.
async fn grants(url: &str) -> Res<Value> {
    let origin = url.trim_end_matches("/mcp");
    let target = HttpTarget::from_url(&format!("{origin}/stats"), None)?;
    let stream = TcpStream::connect(target.addr).await?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get("/stats")
        .header(header::HOST, target.addr.to_string())
        .body(Empty::new())?;
    let body = send
        .send_request(req)
        .await?
        .into_body()
        .collect()
        .await?
        .to_bytes();
    let v: Value = serde_json::from_slice(&body)?;
    Ok(v.get("grants").cloned().unwrap_or(Value::Null))
}

fn count(v: &Value, grant: &str) -> u64 {
    v.get(grant).and_then(Value::as_u64).unwrap_or(0)
}

fn ratio(x: f64, base: f64) -> String {
    if base > 0.0 {
        format!("{:.2}×", x / base)
    } else {
        "–".into()
    }
}

/// For each upstream, the added p50 of each path round by round (against `direct` in
/// the same round): min / median / max, the spread within this run.
fn round_spread(rows: &[Row]) -> String {
    let mut out = String::new();
    for direct in rows.iter().filter(|r| r.path == "direct") {
        let paths: Vec<String> = rows
            .iter()
            .filter(|r| r.upstream == direct.upstream && r.path != "direct" && r.failed.is_none())
            .map(|r| {
                let mut added: Vec<f64> = r
                    .round_p50_us
                    .iter()
                    .zip(&direct.round_p50_us)
                    .map(|(p, d)| p - d)
                    .collect();
                added.sort_by(f64::total_cmp);
                match (added.first(), added.last()) {
                    (Some(lo), Some(hi)) => format!(
                        "{} {lo:+.0} / {:+.0} / {hi:+.0}",
                        r.path,
                        quantile(&added, 0.5)
                    ),
                    _ => format!("{} –", r.path),
                }
            })
            .collect();
        let _ = writeln!(out, "- {}: {}", direct.upstream, paths.join("; "));
    }
    if out.is_empty() {
        return out;
    }
    format!(
        "\nAdded p50 round by round (each round's p50 minus direct's in the same round; min / median / max over the rounds, µs):\n\n{out}"
    )
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.digits$}"))
}

#[allow(clippy::too_many_arguments)]
fn report(
    plan: &Plan,
    rows: &[Row],
    mem: &Memory,
    has_stdio: bool,
    before: Value,
    after: Value,
    daemon_rss: u64,
    daemon_log: &str,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Latency: sequential `tools/call echo`, {} rounds of {} timed calls per path ({} per path) after {} warm-up calls. In each round every path to the upstream takes its turn (in an order shuffled per round; {} untimed calls open each turn), its connection or process kept from round to round, so that the machine's drift hits all paths alike; p50 and p99 are over all of a path's calls. Throughput: at each of 1, 16, 64 clients (HTTP: one connection and session each; stdio: calls in flight on the one pipe), {} slices of {} s per path, interleaved the same way; the figure is the median slice, and CPU per 10k calls is the path's process during its own slices. Ratios are against `direct` to the same upstream. `{RELAY_PATH}` is not a competitor: a bare byte relay (the testkit's `tcp-relay`: tokio `copy_bidirectional`, `TCP_NODELAY`, one thread) between the client and the upstream, showing what one extra loopback hop costs on this machine, the floor under any proxy.\n",
        plan.rounds,
        plan.calls_per_round,
        plan.rounds * plan.calls_per_round,
        plan.warmup,
        plan.round_warmup,
        plan.slices,
        plan.slice_secs
    );
    let _ = writeln!(
        out,
        "| upstream | path | p50 µs | p99 µs | added p50 µs | p50 ratio | calls/s @1 | @16 | @64 | @64 ratio | CPU ms / 10k calls | cold start ms | bridge RSS MB | note |"
    );
    let _ = writeln!(
        out,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    for row in rows {
        let direct = rows
            .iter()
            .find(|r| r.upstream == row.upstream && r.path == "direct");
        if let Some(e) = &row.failed {
            let _ = writeln!(
                out,
                "| {} | {} | failed: {} |||||||||||| |",
                row.upstream,
                row.path,
                e.replace('|', "/")
            );
            continue;
        }
        let (added, p50r, r64) = match direct {
            Some(d) if row.path != "direct" => (
                format!("{:+.0}", row.p50_us - d.p50_us),
                ratio(row.p50_us, d.p50_us),
                ratio(row.rps[2], d.rps[2]),
            ),
            _ => ("–".into(), "1.00×".into(), "1.00×".into()),
        };
        let mut note = row.note.clone();
        if row.errors > 0 {
            let _ = write!(note, " {} failed calls", row.errors);
        }
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.0} | {} | {} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} | {} |",
            row.upstream,
            row.path,
            row.p50_us,
            row.p99_us,
            added,
            p50r,
            row.rps[0],
            row.rps[1],
            row.rps[2],
            r64,
            opt(row.cpu_ms_per_10k, 0),
            opt(row.cold_ms, 1),
            opt(row.rss_kb.map(|k| k as f64 / 1024.0), 1),
            note.trim()
        );
    }
    let _ = write!(out, "{}", round_spread(rows));
    if !has_stdio {
        let _ = writeln!(
            out,
            "\n`latchkey stdio` is not in this build (`latchkey stdio --help` failed): no stdio rows for latchkey."
        );
    }
    let refreshes = count(&after, "refresh_token").saturating_sub(count(&before, "refresh_token"));
    let logins =
        count(&after, "authorization_code").saturating_sub(count(&before, "authorization_code"));
    let _ = writeln!(
        out,
        "\nOAuth: access tokens live {TOKEN_LIFETIME} s; during the run the authorization server answered {refreshes} refreshes and {logins} new logins (tokens were stored by `latchkey login` before it). Daemon RSS at the end of the run: {:.1} MB; its log has {} lines.",
        daemon_rss as f64 / 1024.0,
        daemon_log.lines().count()
    );
    let _ = writeln!(
        out,
        "\n| memory (latchkey daemon, fast upstream) | MB |\n| --- | ---: |"
    );
    let mb = |kb: u64| kb as f64 / 1024.0;
    let _ = writeln!(
        out,
        "| idle RSS, 20 configured servers | {:.1} |",
        mb(mem.idle20_kb)
    );
    let _ = writeln!(
        out,
        "| RSS before opening streams (after one call) | {:.1} |",
        mb(mem.streams_before_kb)
    );
    let _ = writeln!(
        out,
        "| RSS with {} open SSE streams | {:.1} |",
        mem.streams,
        mb(mem.streams_kb)
    );
    let _ = writeln!(
        out,
        "| RSS before the big SSE response | {:.1} |",
        mb(mem.big_before_kb)
    );
    let _ = writeln!(
        out,
        "| RSS growth while relaying one {:.0} MB SSE response (peak − before, sampled every 5 ms) | {:.2} |",
        mem.big_mb,
        mb(mem.big_growth_kb)
    );
    let _ = writeln!(
        out,
        "| relay rate of that response, through latchkey / direct (MB/s) | {:.0} / {:.0} |",
        mem.big_mb_per_s, mem.direct_big_mb_per_s
    );
    out
}
