use std::fmt;

/// A string that must never be printed.
///
/// `Debug` and `Display` are both masked, there is no `Serialize`, and the only way to
/// read the value is [`Secret::expose`], which makes every use greppable.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<str>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into().into_boxed_str())
    }

    /// Compares with `candidate` in time that depends only on the lengths, so a
    /// forged `state` or key cannot be guessed byte by byte (`subtle`, whose
    /// comparison the optimizer cannot turn into an early exit).
    pub fn matches(&self, candidate: &str) -> bool {
        use subtle::ConstantTimeEq as _;
        self.0.as_bytes().ct_eq(candidate.as_bytes()).into()
    }

    /// The secret value. Call this only where the value leaves the process on purpose
    /// (an outgoing header, the keyring).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::Secret;

    #[test]
    fn debug_and_display_are_masked() {
        let secret = Secret::new("hunter2-token");
        let printed = format!("{secret:?} {secret} {:?}", Some(&secret));
        assert!(!printed.contains("hunter2"), "{printed}");
        assert_eq!(secret.expose(), "hunter2-token");
        assert!(secret.matches("hunter2-token"));
        assert!(!secret.matches("hunter2-tokeN") && !secret.matches("hunter2"));
    }
}
