//! The device authorization grant (RFC 8628), for a person who is not at this
//! machine (`latchkey login --no-browser` on a server or in a container): they open a
//! short URL anywhere and type a code, while latchkey polls the token endpoint.

use std::time::Duration;

use crate::Secret;
use crate::target::Http;
use crate::token::{self, ClientCredentials, TokenError, TokenSet};
use serde::Deserialize;

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// RFC 8628 §3.2: the polling interval when the server gives none.
const DEFAULT_INTERVAL: u64 = 5;
/// RFC 8628 §3.5: `slow_down` adds five seconds.
const SLOW_DOWN: u64 = 5;
/// The numbers in a device authorization response come from the network: a code
/// lives at most a day and is polled at least once a minute, whatever the server
/// says, so no hostile value can overflow a deadline or stall a login forever.
const MAX_EXPIRES_IN: u64 = 24 * 3600;
const MAX_INTERVAL: u64 = 60;

/// What the person must do, and what latchkey polls with.
#[derive(Debug)]
pub struct DeviceAuthorization {
    pub device_code: Secret,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub expires_in: Duration,
    pub interval: Duration,
}

#[derive(Deserialize)]
struct Response {
    device_code: String,
    user_code: String,
    // RFC 8628 names it verification_uri; some servers send the draft's name.
    #[serde(alias = "verification_url")]
    verification_uri: String,
    verification_uri_complete: Option<String>,
    expires_in: u64,
    interval: Option<u64>,
}

/// Asks for a device code (RFC 8628 §3.1).
pub async fn start(
    http: &Http,
    endpoint: &str,
    client: &ClientCredentials,
    scopes: &[String],
    resource: Option<&str>,
) -> Result<DeviceAuthorization, TokenError> {
    let scope = scopes.join(" ");
    let mut form = Vec::new();
    if !scope.is_empty() {
        form.push(("scope", scope.as_str()));
    }
    if let Some(resource) = resource {
        form.push(("resource", resource));
    }
    let bytes = token::post_form(
        http,
        "device authorization endpoint",
        endpoint,
        Some(client),
        &form,
    )
    .await?;
    parse_response(&bytes)
}

/// A device authorization response's body, checked and clamped: the pure part of
/// [`start`], on its own for the fuzz target and tests.
pub(crate) fn parse_response(bytes: &[u8]) -> Result<DeviceAuthorization, TokenError> {
    let response: Response = serde_json::from_slice(bytes).map_err(|_| TokenError::Malformed {
        cause: "not a device authorization response (RFC 8628 §3.2)".into(),
    })?;
    let mut response = response;
    // Shown to the person: only an http(s) URL, in its parsed (escaped) form.
    let web = |text: &str| {
        url::Url::parse(text)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .map(String::from)
    };
    response.verification_uri =
        web(&response.verification_uri).ok_or_else(|| TokenError::Malformed {
            cause: "the device authorization response's verification_uri is not an http(s) URL"
                .into(),
        })?;
    response.verification_uri_complete =
        response.verification_uri_complete.as_deref().and_then(web);
    Ok(DeviceAuthorization::from(response))
}

impl From<Response> for DeviceAuthorization {
    fn from(response: Response) -> Self {
        Self {
            device_code: Secret::new(response.device_code),
            // Printed on a terminal: no control character (an escape sequence) gets there.
            user_code: response
                .user_code
                .chars()
                .flat_map(|c| {
                    let escaped: Vec<char> = if c.is_control() {
                        c.escape_default().collect()
                    } else {
                        vec![c]
                    };
                    escaped
                })
                .collect(),
            verification_uri: response.verification_uri,
            verification_uri_complete: response.verification_uri_complete,
            expires_in: Duration::from_secs(response.expires_in.min(MAX_EXPIRES_IN)),
            interval: Duration::from_secs(
                response
                    .interval
                    .unwrap_or(DEFAULT_INTERVAL)
                    .clamp(1, MAX_INTERVAL),
            ),
        }
    }
}

/// Polls the token endpoint (RFC 8628 §3.4-3.5) until the person approves, denies,
/// or the code expires.
pub async fn poll(
    http: &Http,
    endpoint: &str,
    client: &ClientCredentials,
    device: &DeviceAuthorization,
    resource: Option<&str>,
    requested: &[String],
) -> Result<TokenSet, TokenError> {
    let deadline = tokio::time::Instant::now()
        .checked_add(device.expires_in)
        .unwrap_or_else(tokio::time::Instant::now);
    let mut interval = device.interval;
    loop {
        tokio::time::sleep(interval).await;
        if tokio::time::Instant::now() >= deadline {
            return Err(TokenError::Refused {
                error: "expired_token".into(),
                description: Some("the code was not entered in time; run the login again".into()),
            });
        }
        let mut form = vec![
            ("grant_type", GRANT_TYPE),
            ("device_code", device.device_code.expose()),
        ];
        if let Some(resource) = resource {
            form.push(("resource", resource));
        }
        match token::grant(http, endpoint, Some(client), &form, requested).await {
            Err(TokenError::Refused { error, .. }) if error == "authorization_pending" => {}
            Err(TokenError::Refused { error, .. }) if error == "slow_down" => {
                interval = (interval + Duration::from_secs(SLOW_DOWN))
                    .min(Duration::from_secs(MAX_INTERVAL));
            }
            // A network blip while polling is not the person's answer: keep polling.
            Err(TokenError::Network { .. } | TokenError::Unavailable { .. }) => {}
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `expires_in` and `interval` as a hostile server sends them: the login neither
    /// panics (an `Instant` overflow once did) nor waits for ever.
    #[tokio::test]
    async fn hostile_numbers_are_clamped() {
        let response: Response = serde_json::from_value(serde_json::json!({
            "device_code": "d", "user_code": "U", "verification_uri": "https://a.example/d",
            "expires_in": u64::MAX, "interval": u64::MAX,
        }))
        .expect("a response");
        let device = DeviceAuthorization::from(response);
        assert_eq!(device.expires_in, Duration::from_secs(MAX_EXPIRES_IN));
        let escaped: Response = serde_json::from_value(serde_json::json!({
            "device_code": "d", "user_code": "AB\u{1b}[2J\nCD", "verification_uri": "https://a.example/d",
            "expires_in": 60,
        }))
        .expect("a response");
        assert_eq!(
            DeviceAuthorization::from(escaped).user_code,
            "AB\\u{1b}[2J\\nCD"
        );
        assert_eq!(device.interval, Duration::from_secs(MAX_INTERVAL));
        let credentials = ClientCredentials {
            client_id: "c".into(),
            auth: token::ClientAuth::None,
            issuer: "https://a.example".into(),
        };
        let clients = crate::target::Clients::new(reqwest::Client::builder).expect("clients");
        let server = url::Url::parse("http://127.0.0.1/mcp").expect("a URL");
        let (http, device) = (
            Http::new(clients, &server),
            DeviceAuthorization {
                expires_in: Duration::MAX,
                ..device
            },
        );
        let polled = poll(
            &http,
            "http://127.0.0.1:9/token",
            &credentials,
            &device,
            None,
            &[],
        );
        // It sleeps its first interval; what matters is that it got there.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), polled)
                .await
                .is_err()
        );
    }
}
