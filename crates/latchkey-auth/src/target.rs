//! Where a server's OAuth requests may go.
//!
//! Every URL an OAuth request goes to comes from the network: the 401's
//! `resource_metadata`, the authorization servers that metadata names, and the
//! endpoints their metadata names. Unchecked, a public MCP server could make latchkey
//! send requests (a token request carries the client secret) to this machine or to the
//! network it is on, from behind its firewall (server-side request forgery). So the
//! OAuth requests of a server on a public address go to public addresses only; a server
//! on a loopback, private, link-local or unique local address is on the user's own
//! network already, and its requests may go to such addresses too. No setting lifts
//! the rule.
//!
//! The rule is about addresses, not names: a name is resolved, and refused when none
//! of its addresses is allowed; and the client for public servers resolves through
//! [`PublicOnly`], which drops the refused addresses, so that the address it connects
//! to is one that passed (a name that resolves to a public address for the check and to
//! 127.0.0.1 for the connection gets nowhere). Only OAuth requests go through these
//! clients: the proxy's own requests to a server are not checked and cost nothing more.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// An address block that a public server's OAuth requests may not go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Block {
    range: &'static str,
    kind: &'static str,
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.range, self.kind)
    }
}

const fn block(range: &'static str, kind: &'static str) -> Option<Block> {
    Some(Block { range, kind })
}

/// The block `ip` is in, if it is not a public address.
fn non_public(ip: IpAddr) -> Option<Block> {
    match ip {
        IpAddr::V4(ip) => non_public_v4(ip),
        IpAddr::V6(ip) => non_public_v6(ip),
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<Block> {
    match ip.octets() {
        [0, ..] => block("0.0.0.0/8", "this network"),
        [10, ..] => block("10.0.0.0/8", "private"),
        [100, 64..=127, ..] => block("100.64.0.0/10", "shared address space, carrier-grade NAT"),
        [127, ..] => block("127.0.0.0/8", "loopback"),
        [169, 254, ..] => block("169.254.0.0/16", "link-local"),
        [172, 16..=31, ..] => block("172.16.0.0/12", "private"),
        [192, 168, ..] => block("192.168.0.0/16", "private"),
        [255, 255, 255, 255] => block("255.255.255.255", "broadcast"),
        _ => None,
    }
}

fn non_public_v6(ip: Ipv6Addr) -> Option<Block> {
    if ip.is_loopback() {
        return block("::1", "loopback");
    }
    if ip.is_unspecified() {
        return block("::", "unspecified");
    }
    // IPv4-mapped (::ffff:0:0/96) and IPv4-compatible (::/96) addresses reach the
    // IPv4 address in them, and so does NAT64's well-known prefix (64:ff9b::/96).
    let segments = ip.segments();
    let nat64 = segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    if let Some(v4) = ip.to_ipv4().or_else(|| {
        nat64.then(|| Ipv4Addr::from((u32::from(segments[6]) << 16) | u32::from(segments[7])))
    }) {
        return non_public_v4(v4);
    }
    match segments[0] {
        0xfe80..=0xfebf => block("fe80::/10", "link-local"),
        0xfec0..=0xfeff => block("fec0::/10", "site-local"),
        0xfc00..=0xfdff => block("fc00::/7", "unique local"),
        _ => None,
    }
}

/// The HTTP clients OAuth requests go out on: `public`, whose resolver drops the
/// addresses the rule refuses, for servers on a public address; `any` for the others.
#[derive(Debug, Clone)]
pub struct Clients {
    public: reqwest::Client,
    any: reqwest::Client,
}

impl Clients {
    /// Both from `builder`, which carries the caller's settings (TLS, user agent,
    /// redirect policy).
    pub fn new(builder: impl Fn() -> reqwest::ClientBuilder) -> Result<Self, reqwest::Error> {
        Ok(Self {
            public: builder()
                .dns_resolver(Arc::new(PublicOnly::from_env()))
                .build()?,
            any: builder().build()?,
        })
    }
}

/// One MCP server's OAuth requests: [`Clients`], and the rule the server's configured
/// URL decides.
#[derive(Debug, Clone)]
pub struct Http {
    clients: Clients,
    server: Url,
    /// DPoP for the token requests made through this one (RFC 9449 §5).
    dpop: Option<Arc<crate::dpop::Prover>>,
}

/// A request that was not sent, or failed.
#[derive(Debug)]
pub(crate) enum SendError {
    Refused(Refused),
    Network(reqwest::Error),
}

/// What [`Http::fetch`] fails with, for each endpoint's error type to name: every
/// text is without the URL, whose query may hold a secret.
#[derive(Debug)]
pub(crate) enum FetchError {
    Refused(Refused),
    Network(String),
    /// The body passed [`crate::body::MAX_RESPONSE`].
    TooLarge(String),
}

/// A request the rule does not allow. Names the URL (without its query, which may
/// hold a secret), why, the rule and that nothing overrides it.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "latchkey does not send requests to the {what} at {url}: {why}. The MCP server {server} is on a public address, and a public server's OAuth requests go to public addresses only, so that it cannot point latchkey at this machine or its network. No setting allows this; if the server is in fact on your own network, set its url to its address there (or a name that resolves to it)"
)]
pub struct Refused {
    what: &'static str,
    url: String,
    why: String,
    server: String,
}

impl Http {
    pub fn new(clients: Clients, server: &Url) -> Self {
        Self {
            clients,
            server: server.clone(),
            dpop: None,
        }
    }

    /// This server's way out for token requests that carry DPoP proofs.
    pub fn with_dpop(&self, prover: Arc<crate::dpop::Prover>) -> Self {
        Self {
            dpop: Some(prover),
            ..self.clone()
        }
    }

    pub(crate) fn dpop(&self) -> Option<&crate::dpop::Prover> {
        self.dpop.as_deref()
    }

    /// The client to send a request to `url` with, once the rule allows it. `what`
    /// names the URL in messages.
    pub(crate) async fn client(
        &self,
        what: &'static str,
        url: &str,
    ) -> Result<&reqwest::Client, Refused> {
        if !is_public(&self.server).await {
            return Ok(&self.clients.any);
        }
        // A URL that does not parse is not sent either: reqwest parses it the same way.
        let Ok(parsed) = Url::parse(url) else {
            return Ok(&self.clients.public);
        };
        match refusal(&parsed).await {
            None => Ok(&self.clients.public),
            Some(why) => Err(self.refused(what, url, why)),
        }
    }

    /// Sends the request that `request` builds on the client for `url`.
    pub(crate) async fn send(
        &self,
        what: &'static str,
        url: &str,
        request: impl FnOnce(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, SendError> {
        let client = self.client(what, url).await.map_err(SendError::Refused)?;
        request(client).send().await.map_err(|e| {
            // The name resolved to refused addresses only by the time of the connection.
            match dropped(&e) {
                Some(why) => SendError::Refused(self.refused(what, url, why.to_owned())),
                None => SendError::Network(e),
            }
        })
    }

    /// [`Http::send`], then the whole body, capped at [`crate::body::MAX_RESPONSE`]:
    /// what every token, device, revocation and registration request reads.
    pub(crate) async fn fetch(
        &self,
        what: &'static str,
        url: &str,
        request: impl FnOnce(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, Vec<u8>), FetchError> {
        let (status, _, body) = self.fetch_headed(what, url, request).await?;
        Ok((status, body))
    }

    /// [`Http::fetch`] with the response's headers (for `DPoP-Nonce`).
    pub(crate) async fn fetch_headed(
        &self,
        what: &'static str,
        url: &str,
        request: impl FnOnce(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, reqwest::header::HeaderMap, Vec<u8>), FetchError> {
        let response = self.send(what, url, request).await.map_err(|e| match e {
            SendError::Refused(refused) => FetchError::Refused(refused),
            SendError::Network(e) => FetchError::Network(e.without_url().to_string()),
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = crate::body::read(response, crate::body::MAX_RESPONSE)
            .await
            .map_err(|e| match e {
                crate::body::BodyError::Network(_) => FetchError::Network(e.to_string()),
                crate::body::BodyError::TooLarge { .. } => FetchError::TooLarge(e.to_string()),
            })?;
        Ok((status, headers, body))
    }

    fn refused(&self, what: &'static str, url: &str, why: String) -> Refused {
        Refused {
            what,
            url: shown(url),
            why,
            server: shown(self.server.as_str()),
        }
    }
}

/// Whether `server` is on a public address: an address outside every [`non_public`]
/// block, or a name with at least one such address. A name that does not resolve here
/// counts as public.
async fn is_public(server: &Url) -> bool {
    match server.host() {
        Some(Host::Ipv4(ip)) => non_public(ip.into()).is_none(),
        Some(Host::Ipv6(ip)) => non_public(ip.into()).is_none(),
        Some(Host::Domain(name)) => match lookup(name).await {
            Ok(addresses) if !addresses.is_empty() => {
                addresses.iter().any(|ip| non_public(*ip).is_none())
            }
            _ => true,
        },
        None => true,
    }
}

/// Why a public server's request may not go to `url`, if it may not: its address is
/// in a [`non_public`] block, or its name resolves to such addresses only. A name that
/// does not resolve here is left to the connection: [`PublicOnly`] gets the same
/// answer, and a proxy resolves it on its side.
async fn refusal(url: &Url) -> Option<String> {
    let literal = |ip: IpAddr| non_public(ip).map(|block| format!("{ip} is in {block}"));
    match url.host()? {
        Host::Ipv4(ip) => literal(ip.into()),
        Host::Ipv6(ip) => literal(ip.into()),
        Host::Domain(name) => {
            let addresses = lookup(name).await.ok()?;
            resolved_to_refused(name, addresses.iter().copied())
        }
    }
}

/// Why `name` is refused when every one of its `addresses` is in a block.
fn resolved_to_refused(name: &str, addresses: impl Iterator<Item = IpAddr>) -> Option<String> {
    let mut first = None;
    for ip in addresses {
        let block = non_public(ip)?;
        first.get_or_insert((ip, block));
    }
    first.map(|(ip, block)| format!("{name} resolves to {ip}, in {block}"))
}

async fn lookup(name: &str) -> std::io::Result<Vec<IpAddr>> {
    Ok(tokio::net::lookup_host((name, 0))
        .await?
        .map(|address| address.ip())
        .collect())
}

/// A URL as messages show it: without its query, fragment and user info, which may
/// hold secrets.
pub(crate) fn shown(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut url) => {
            url.set_query(None);
            url.set_fragment(None);
            // Only URLs that cannot have user info refuse these, and they have none.
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        }
        Err(_) => url.split(['?', '#']).next().unwrap_or_default().to_owned(),
    }
}

/// What [`PublicOnly`] fails a lookup with: every address was refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Dropped(String);

/// Why a request failed, if [`PublicOnly`] refused every address of its host.
fn dropped(error: &reqwest::Error) -> Option<&str> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(Dropped(why)) = e.downcast_ref::<Dropped>() {
            return Some(why);
        }
        source = e.source();
    }
    None
}

/// The resolver of the client for public servers: it drops the addresses the rule
/// refuses, so that the connection goes to an address that passed, whatever the name
/// resolves to by then. The hosts of the environment's proxies are the user's own
/// and pass as they are: with a proxy, the resolver sees only the proxy's name.
#[derive(Debug)]
struct PublicOnly {
    proxies: Vec<String>,
}

impl PublicOnly {
    fn from_env() -> Self {
        let vars = [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
        ];
        Self {
            proxies: vars
                .iter()
                .filter_map(|var| std::env::var(var).ok())
                .filter_map(|value| proxy_host(&value))
                .collect(),
        }
    }
}

/// The host name of a proxy URL; reqwest reads one without a scheme as `http://`.
fn proxy_host(value: &str) -> Option<String> {
    let url = Url::parse(value)
        .ok()
        .filter(Url::has_host)
        .or_else(|| Url::parse(&format!("http://{value}")).ok())?;
    match url.host()? {
        Host::Domain(name) => Some(name.to_owned()),
        Host::Ipv4(_) | Host::Ipv6(_) => None,
    }
}

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let name = name.as_str().to_owned();
        let proxy = self.proxies.iter().any(|p| p.eq_ignore_ascii_case(&name));
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            if proxy {
                return Ok(Box::new(all.into_iter()) as Addrs);
            }
            let kept: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|address| non_public(address.ip()).is_none())
                .collect();
            if kept.is_empty()
                && let Some(why) = resolved_to_refused(&name, all.iter().map(SocketAddr::ip))
            {
                return Err(Box::new(Dropped(why)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(ip: &str) -> Option<&'static str> {
        non_public(ip.parse().expect("an address")).map(|block| block.kind)
    }

    #[test]
    fn every_non_public_block_and_its_edges() {
        for (ip, expected) in [
            ("0.0.0.0", Some("this network")),
            ("0.255.255.255", Some("this network")),
            ("1.0.0.0", None),
            ("9.255.255.255", None),
            ("10.0.0.0", Some("private")),
            ("10.255.255.255", Some("private")),
            ("11.0.0.0", None),
            ("100.63.255.255", None),
            (
                "100.64.0.0",
                Some("shared address space, carrier-grade NAT"),
            ),
            (
                "100.127.255.255",
                Some("shared address space, carrier-grade NAT"),
            ),
            ("100.128.0.0", None),
            ("126.255.255.255", None),
            ("127.0.0.1", Some("loopback")),
            ("127.255.255.254", Some("loopback")),
            ("128.0.0.0", None),
            ("169.253.255.255", None),
            ("169.254.169.254", Some("link-local")),
            ("169.255.0.0", None),
            ("172.15.255.255", None),
            ("172.16.0.0", Some("private")),
            ("172.31.255.255", Some("private")),
            ("172.32.0.0", None),
            ("192.167.255.255", None),
            ("192.168.0.1", Some("private")),
            ("192.169.0.0", None),
            ("255.255.255.255", Some("broadcast")),
            ("255.255.255.254", None),
            ("8.8.8.8", None),
            ("203.0.113.7", None),
            ("::1", Some("loopback")),
            ("::", Some("unspecified")),
            ("fe80::1", Some("link-local")),
            ("febf:ffff::1", Some("link-local")),
            ("fec0::1", Some("site-local")),
            ("fc00::1", Some("unique local")),
            ("fdff:ffff::1", Some("unique local")),
            ("fbff:ffff::1", None),
            ("ff02::1", None),
            ("2001:4860:4860::8888", None),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("::ffff:10.1.2.3", Some("private")),
            ("::ffff:169.254.169.254", Some("link-local")),
            ("::ffff:8.8.8.8", None),
            ("::127.0.0.1", Some("loopback")),
            ("::192.168.1.1", Some("private")),
            ("::8.8.8.8", None),
            ("64:ff9b::7f00:1", Some("loopback")),
            ("64:ff9b::a00:1", Some("private")),
            ("64:ff9b::808:808", None),
        ] {
            assert_eq!(kind(ip), expected, "{ip}");
        }
    }

    fn http(server: &str) -> Http {
        let clients = Clients::new(reqwest::Client::builder).expect("clients");
        Http::new(clients, &Url::parse(server).expect("a URL"))
    }

    #[tokio::test]
    async fn a_server_on_a_non_public_address_may_name_any_address() {
        for server in [
            "http://127.0.0.1:8080/mcp",
            "http://localhost:8080/mcp",
            "https://10.1.2.3/mcp",
            "https://[fd00::1]/mcp",
            "https://[::ffff:192.168.1.1]/mcp",
        ] {
            let http = http(server);
            for target in ["http://127.0.0.1:9/token", "https://10.0.0.1/token"] {
                assert!(
                    http.client("token endpoint", target).await.is_ok(),
                    "{server} → {target}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_public_server_may_not_name_this_machine_or_its_network() {
        let http = http("https://203.0.113.7/mcp");
        for (target, why) in [
            (
                "http://127.0.0.1:9/t",
                "127.0.0.1 is in 127.0.0.0/8 (loopback)",
            ),
            ("https://10.0.0.1/t", "10.0.0.1 is in 10.0.0.0/8 (private)"),
            (
                "https://169.254.169.254/latest/meta-data",
                "169.254.169.254 is in 169.254.0.0/16 (link-local)",
            ),
            ("https://[::1]/t", "::1 is in ::1 (loopback)"),
            (
                "https://[::ffff:7f00:1]/t",
                "::ffff:127.0.0.1 is in 127.0.0.0/8 (loopback)",
            ),
            (
                "https://[fd12::1]/t",
                "fd12::1 is in fc00::/7 (unique local)",
            ),
            ("http://localhost:9/t", "localhost resolves to "),
        ] {
            let e = http
                .client("token endpoint", &format!("{target}?secret=s-1"))
                .await
                .expect_err(target);
            let message = e.to_string();
            assert!(
                message.contains(&format!("token endpoint at {}", shown(target)))
                    && message.contains(why)
                    && message.contains("https://203.0.113.7/mcp is on a public address")
                    && message.contains("No setting allows this"),
                "{message}"
            );
            assert!(!message.contains("s-1"), "{message}");
        }
        for target in ["https://203.0.113.8/token", "https://8.8.8.8/t"] {
            assert!(
                http.client("token endpoint", target).await.is_ok(),
                "{target}"
            );
        }
    }

    /// The resolver is the check at the connection: a name that resolves to refused
    /// addresses only gets no connection, and the error says why.
    #[tokio::test]
    async fn the_public_client_connects_to_no_refused_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let http = http("https://203.0.113.7/mcp");
        let url = format!("http://localhost:{port}/token");
        // Past the check, as a name that resolved elsewhere a moment before would be.
        let e = http
            .clients
            .public
            .get(&url)
            .send()
            .await
            .expect_err("no connection");
        let why = dropped(&e).expect("the resolver refused");
        assert!(why.starts_with("localhost resolves to "), "{why}");
        let accepted =
            tokio::time::timeout(std::time::Duration::from_millis(100), listener.accept());
        assert!(accepted.await.is_err(), "a connection was made");
        // A proxy's own name passes.
        let proxy = PublicOnly {
            proxies: vec!["localhost".into()],
        };
        let name: Name = "localhost".parse().expect("a name");
        assert!(proxy.resolve(name).await.is_ok());
    }

    #[test]
    fn proxy_hosts_and_shown_urls() {
        assert_eq!(
            proxy_host("http://proxy.corp:3128").as_deref(),
            Some("proxy.corp")
        );
        assert_eq!(proxy_host("proxy.corp:3128").as_deref(), Some("proxy.corp"));
        assert_eq!(proxy_host("http://10.0.0.1:3128"), None);
        assert_eq!(
            shown("https://u:p@a.example/x?code=c#f"),
            "https://a.example/x"
        );
        assert_eq!(shown("not a url?secret"), "not a url");
    }
}
