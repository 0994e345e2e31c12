//! Reading a response body from an authorization server with a cap: no server, hostile
//! or broken, can make latchkey hold more than that in memory (a 1 GiB token response
//! was once read whole).

/// Token, registration, device and revocation responses are small JSON objects.
pub(crate) const MAX_RESPONSE: usize = 1024 * 1024;

#[derive(Debug)]
pub(crate) enum BodyError {
    /// Over the cap, by its `Content-Length` or as it streamed.
    TooLarge { limit: usize },
    /// Without its URL, which may carry a secret in its query.
    Network(reqwest::Error),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge { limit } => {
                write!(f, "the response is larger than {} KiB", limit / 1024)
            }
            Self::Network(e) => write!(f, "{e}"),
        }
    }
}

/// The whole body, or an error as soon as it passes `limit` bytes.
pub(crate) async fn read(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| BodyError::Network(e.without_url()))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
    }
    Ok(body)
}
