//! The load generator and driver behind `scripts/bench`: runs one workload through
//! every path (direct to the upstream, latchkey's daemon endpoint, `latchkey stdio`,
//! mcp-remote, mcp-proxy) in one run and prints the figures as Markdown tables, with
//! ratios against the direct connection. It measures; it asserts nothing about time.
//!
//! Usage: mcp-bench --latchkey BIN --fast BIN --browser SCRIPT [--smoke]
//!        [--everything ENTRY.js] [--mcp-remote ENTRY.js] [--mcp-proxy BIN] [--out FILE]
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

#[derive(Debug, Clone)]
struct Args {
    latchkey: PathBuf,
    fast: PathBuf,
    browser: PathBuf,
    smoke: bool,
    everything: Option<PathBuf>,
    mcp_remote: Option<PathBuf>,
    mcp_proxy: Option<PathBuf>,
    out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy)]
struct Plan {
    warmup: usize,
    calls: usize,
    secs: f64,
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
            "usage: mcp-bench --latchkey BIN --fast BIN --browser SCRIPT [--smoke] [--everything ENTRY.js] [--mcp-remote ENTRY.js] [--mcp-proxy BIN] [--out FILE]",
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
async fn start_fast(args: &Args, procs: &Procs, protected: bool) -> Res<(String, u32)> {
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

    async fn connect(target: &HttpTarget) -> Res<Self> {
        let stream = TcpStream::connect(target.addr).await?;
        stream.set_nodelay(true)?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
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
        })
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

#[derive(Debug, Default, Clone)]
struct Row {
    upstream: String,
    path: String,
    note: String,
    p50_us: f64,
    p99_us: f64,
    rps: [f64; 3],
    cpu_ms_per_10k: Option<f64>,
    cold_ms: Option<f64>,
    rss_kb: Option<u64>,
    errors: u64,
    failed: Option<String>,
}

const CONCURRENCY: [usize; 3] = [1, 16, 64];

async fn latency(path: &Route, plan: &Plan) -> Res<(f64, f64)> {
    let mut client = Client::open(path).await?;
    for _ in 0..plan.warmup {
        client.echo().await?;
    }
    let mut samples = Vec::with_capacity(plan.calls);
    for _ in 0..plan.calls {
        let t = Instant::now();
        client.echo().await?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    Ok((at(0.50), at(0.99)))
}

/// Calls per second with `clients` clients calling back to back for `secs`; and errors.
async fn throughput(path: &Route, clients: usize, secs: f64) -> Res<(f64, u64, u64)> {
    let mut opened = Vec::with_capacity(clients);
    for _ in 0..clients {
        opened.push(Client::open(path).await?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for mut client in opened {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                match client.echo().await {
                    Ok(()) => ok += 1,
                    Err(_) => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for t in tasks {
        let (o, f) = t.await?;
        ok += o;
        failed += f;
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok((ok as f64 / elapsed, ok, failed))
}

/// Latency, throughput and (for `cpu_pid`) CPU per 10,000 calls through one path.
async fn measure(path: &Route, cpu_pid: Option<u32>, plan: &Plan, row: &mut Row) -> Res<()> {
    let (p50, p99) = latency(path, plan).await?;
    row.p50_us = p50;
    row.p99_us = p99;
    let cpu0 = cpu_pid.map(cpu_secs);
    let mut total = 0;
    for (i, &c) in CONCURRENCY.iter().enumerate() {
        let (rps, ok, failed) = throughput(path, c, plan.secs).await?;
        row.rps[i] = rps;
        row.errors += failed;
        total += ok;
    }
    if let (Some(pid), Some(c0)) = (cpu_pid, cpu0) {
        row.cpu_ms_per_10k = Some((cpu_secs(pid) - c0) * 1000.0 * 10_000.0 / total.max(1) as f64);
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
    let path = Route::Http(HttpTarget::from_url(&url, None)?);
    let (rps, ok, failed) = throughput(&path, clients, secs).await?;
    println!("{rps:.0} calls/s ({ok} calls, {failed} failed)");
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
            calls: 300,
            secs: 0.2,
            cold_runs: 1,
            streams: 50,
            big_bytes: 4 << 20,
        }
    } else {
        Plan {
            warmup: 500,
            calls: 3000,
            secs: 3.0,
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

/// A stdio bridge: its name, a note for the table, and how to start it.
type Bridge = (&'static str, String, Box<dyn Fn() -> Command>);

struct Upstream {
    name: &'static str,
    url: String,
    /// The token a direct client sends.
    bearer: Option<String>,
    /// The server's name in latchkey's config.
    server: &'static str,
    pid: Option<u32>,
}

async fn run_in(env: &Env, procs: &Procs, plan: &Plan) -> Res<String> {
    let args = &env.args;
    let (fast_url, fast_pid) = start_fast(args, procs, false).await?;
    let (oauth_url, oauth_pid) = start_fast(args, procs, true).await?;
    let mut upstreams = vec![
        Upstream {
            name: "fast",
            url: fast_url.clone(),
            bearer: None,
            server: "fast",
            pid: Some(fast_pid),
        },
        Upstream {
            name: "fast + OAuth",
            url: oauth_url.clone(),
            bearer: Some(DIRECT_TOKEN.into()),
            server: "fast-oauth",
            pid: Some(oauth_pid),
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
        });
    }
    let servers: Vec<(String, String)> = upstreams
        .iter()
        .map(|u| (u.server.to_owned(), u.url.clone()))
        .collect();
    let config = env.write_config("latchkey.toml", &servers)?;

    progress("latchkey login fast-oauth (tokens stored before the run)");
    let status = tokio::time::timeout(
        Duration::from_secs(60),
        env.command(&args.latchkey)
            .arg("login")
            .arg("fast-oauth")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(env.dir.join("login.log"))?)
            .status(),
    )
    .await
    .map_err(|_| err("latchkey login timed out"))??;
    if !status.success() {
        return Err(err(format!("latchkey login failed: {status}")));
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

    let mut rows = Vec::new();
    let mut direct_cold = HashMap::new();
    for up in &upstreams {
        let direct = HttpTarget::from_url(&up.url, up.bearer.clone())?;
        direct_cold.insert(up.name, cold_http(&direct, plan.cold_runs.max(3)).await?);
        let mut bridges: Vec<Bridge> = Vec::new();
        if has_stdio {
            let (latchkey, config, server) = (args.latchkey.clone(), config.clone(), up.server);
            let envc = Env {
                dir: env.dir.clone(),
                args: args.clone(),
            };
            bridges.push((
                "latchkey stdio",
                String::new(),
                Box::new(move || {
                    let mut c = envc.command(&latchkey);
                    c.arg("stdio").arg(server).arg("--config").arg(&config);
                    c
                }),
            ));
        }
        if let Some(entry) = &args.mcp_remote {
            let (entry, url, bearer) = (entry.clone(), up.url.clone(), up.bearer.clone());
            let envc = Env {
                dir: env.dir.clone(),
                args: args.clone(),
            };
            let note = if bearer.is_some() {
                "static bearer header, no OAuth"
            } else {
                ""
            };
            bridges.push((
                "mcp-remote",
                note.into(),
                Box::new(move || {
                    let mut c = envc.command(Path::new("node"));
                    c.arg(&entry)
                        .arg(&url)
                        .args(["--transport", "http-only", "--allow-http"]);
                    if let Some(b) = &bearer {
                        c.args(["--header", &format!("Authorization: Bearer {b}")]);
                    }
                    c
                }),
            ));
        }
        if let Some(bin) = &args.mcp_proxy {
            let (bin, url, bearer) = (bin.clone(), up.url.clone(), up.bearer.clone());
            let envc = Env {
                dir: env.dir.clone(),
                args: args.clone(),
            };
            let note = if bearer.is_some() {
                "static bearer header, no OAuth"
            } else {
                ""
            };
            bridges.push((
                "mcp-proxy",
                note.into(),
                Box::new(move || {
                    let mut c = envc.command(&bin);
                    c.args(["--transport", "streamablehttp", "--log-level", "WARNING"])
                        .arg(&url);
                    if let Some(b) = &bearer {
                        c.args(["-H", "Authorization", &format!("Bearer {b}")]);
                    }
                    c
                }),
            ));
        }

        progress(&format!("{}: direct", up.name));
        let mut row = Row {
            upstream: up.name.into(),
            path: "direct".into(),
            note: "upstream's own CPU".into(),
            ..Row::default()
        };
        row.cold_ms = direct_cold.get(up.name).copied();
        measure(&Route::Http(direct), up.pid, plan, &mut row).await?;
        rows.push(row);

        progress(&format!("{}: latchkey daemon", up.name));
        let mut row = Row {
            upstream: up.name.into(),
            path: "latchkey daemon".into(),
            ..Row::default()
        };
        let via = HttpTarget {
            addr: daemon_addr,
            path: format!("/{}", up.server),
            bearer: None,
        };
        measure(&Route::Http(via), Some(daemon_pid), plan, &mut row).await?;
        rows.push(row);

        for (name, note, make) in &bridges {
            progress(&format!("{}: {name}", up.name));
            let mut row = Row {
                upstream: up.name.into(),
                path: (*name).into(),
                note: note.clone(),
                ..Row::default()
            };
            let log = env
                .dir
                .join(format!("{}-{}.log", up.server, name.replace(' ', "-")));
            let outcome: Res<()> = async {
                let (cold, rss) = cold_stdio(make.as_ref(), plan.cold_runs, &log).await?;
                row.cold_ms = Some(cold);
                row.rss_kb = Some(rss);
                let local = Procs::default();
                let conn = StdioConn::spawn(make(), &local, &log).await?;
                conn.handshake().await?;
                let pid = conn.pid;
                let r = measure(&Route::Stdio(conn), Some(pid), plan, &mut row).await;
                local.kill_all().await;
                r
            }
            .await;
            if let Err(e) = outcome {
                progress(&format!("{}: {name} failed: {e}", up.name));
                row.failed = Some(e.to_string());
            }
            rows.push(row);
        }
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
        "Latency: {} sequential `tools/call echo` after {} warm-up calls. Throughput: clients calling back to back for {} s at each of 1, 16, 64 clients (HTTP: one connection and session each; stdio: calls in flight on the one pipe). Ratios are against `direct` to the same upstream.\n",
        plan.calls, plan.warmup, plan.secs
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
