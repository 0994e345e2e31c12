//! DPoP (RFC 9449) in a session: which servers use it, the installation's keys (read
//! or made once), the token endpoint's `Prover` with that server's nonce, and the
//! proof of every request to the MCP server. A child of `session.rs`, whose state it
//! reads; apart so that the session's own flow stays as it was.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use reqwest::header::HeaderValue;

use super::{AuthError, ServerAuth, Trigger};
use crate::discovery::Discovered;
use crate::dpop;
use crate::target::Http;

#[derive(Debug, Default)]
pub(super) struct Dpop {
    keys: std::sync::OnceLock<Arc<dpop::Keys>>,
    /// For the issuer it names; its nonce is that server's.
    prover: Mutex<Option<(String, Arc<dpop::Prover>)>>,
    resource_nonce: dpop::Nonce,
    /// The server sent a DPoP challenge (RFC 9449 §7.1): it takes DPoP.
    offered: AtomicBool,
}

impl Dpop {
    /// Notes a DPoP challenge in what a request met.
    pub(super) fn offered_in(&self, trigger: &Trigger) {
        if trigger.challenge.as_ref().is_some_and(|c| c.dpop.is_some()) {
            self.offered.store(true, Ordering::Relaxed);
        }
    }
}

/// DPoP (RFC 9449): whether a server's token requests carry proofs, and the proofs of
/// requests to the resource server.
impl ServerAuth {
    /// The installation's DPoP keys, read (or made) once.
    pub(super) async fn dpop_keys(&self) -> Result<Arc<dpop::Keys>, AuthError> {
        if let Some(keys) = self.dpop.keys.get() {
            return Ok(keys.clone());
        }
        let (store, dir) = (
            self.credentials.store.clone(),
            self.credentials.lock_dir.clone(),
        );
        let keys = tokio::task::spawn_blocking(move || {
            crate::dpop_key::load_or_create(&store, dir.as_ref())
        })
        .await
        .map_err(|e| AuthError::fatal(e.to_string()))?
        .map_err(|e| AuthError::fatal(format!("cannot read or store the DPoP key: {e}")))?;
        Ok(self.dpop.keys.get_or_init(|| Arc::new(keys)).clone())
    }

    /// The way out for `found`'s token endpoint: with DPoP proofs when the config
    /// says `dpop = true`, or says nothing and both ends take DPoP: the authorization
    /// server's metadata lists an algorithm latchkey proves with, and the MCP server
    /// sent a DPoP challenge or names DPoP in its resource metadata. (A server that
    /// takes only Bearer tokens would refuse a bound one; oidc-provider, for one,
    /// offers DPoP by default, in front of servers that know nothing of it.) Tokens
    /// bound already keep their key.
    pub(super) async fn token_http(
        &self,
        found: &Discovered,
        bound_to: Option<dpop::Alg>,
    ) -> Result<Http, AuthError> {
        let (settings, server) = (&self.settings, &found.server);
        let listed = server.dpop_signing_alg_values_supported.as_deref();
        let resource_takes_it = self.dpop.offered.load(Ordering::Relaxed)
            || found.resource_metadata.as_ref().is_some_and(|m| {
                m.dpop_bound_access_tokens_required || m.dpop_signing_alg_values_supported.is_some()
            });
        let alg = match (settings.dpop, bound_to) {
            (Some(false), _) => return Ok(self.http.clone()),
            (_, Some(alg)) => alg,
            (None, None) if listed.is_none() || !resource_takes_it => {
                return Ok(self.http.clone());
            }
            (forced, None) => match dpop::Alg::choose(listed) {
                Some(alg) => alg,
                None if forced.is_none() => return Ok(self.http.clone()),
                None => {
                    return Err(AuthError::fatal(format!(
                        "server {:?}: dpop = true, but the authorization server {} takes DPoP proofs only in {}, and latchkey proves with ES256 or EdDSA; set dpop = false under [servers.{}.oauth]",
                        settings.server,
                        server.issuer,
                        listed.unwrap_or_default().join(", "),
                        settings.server
                    )));
                }
            },
        };
        let key = self.dpop_keys().await?.get(alg).clone();
        let required = settings.dpop == Some(true)
            || found
                .resource_metadata
                .as_ref()
                .is_some_and(|m| m.dpop_bound_access_tokens_required);
        let mut cached = self
            .dpop
            .prover
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let prover = match cached.as_ref() {
            Some((issuer, prover))
                if *issuer == server.issuer
                    && Arc::ptr_eq(&prover.key, &key)
                    && prover.required == required =>
            {
                prover.clone()
            }
            _ => {
                let prover = Arc::new(dpop::Prover {
                    key,
                    nonce: dpop::Nonce::default(),
                    required,
                });
                *cached = Some((server.issuer.clone(), prover.clone()));
                prover
            }
        };
        Ok(self.http.with_dpop(prover))
    }

    /// What a request to the resource server carries: the `Authorization` value,
    /// the DPoP proof for a bound token (`htu` is called only then), and the token's
    /// generation. For a Bearer token, this is [`ServerAuth::bearer`].
    pub fn present(
        &self,
        htm: &str,
        htu: impl FnOnce() -> String,
    ) -> (Option<HeaderValue>, Option<HeaderValue>, u64) {
        let (authorization, generation, ath) = {
            let state = self.lock();
            let live = state
                .tokens
                .as_ref()
                .is_some_and(|t| t.expires_at.is_none_or(|at| at > SystemTime::now()));
            (
                state.bearer.as_ref().filter(|_| live).cloned(),
                state.generation,
                state.dpop_ath.clone(),
            )
        };
        let proof = match (&authorization, ath, self.dpop.keys.get()) {
            (Some(_), Some((alg, ath)), Some(keys)) => {
                let nonce = self.dpop.resource_nonce.get();
                keys.get(alg)
                    .proof(htm, &htu(), Some(&ath), nonce.as_deref())
                    .inspect_err(|e| tracing::warn!(server = %self.settings.server, error = %e, "no DPoP proof"))
                    .ok()
            }
            _ => None,
        };
        (authorization, proof, generation)
    }

    /// Takes the resource server's `DPoP-Nonce` from a response to a request that
    /// carried a proof (RFC 9449 §9); whether it was a new, well-formed one.
    pub fn resource_nonce(&self, value: Option<&HeaderValue>) -> bool {
        let before = self.dpop.resource_nonce.get();
        self.dpop.resource_nonce.update(value) && self.dpop.resource_nonce.get() != before
    }
}
