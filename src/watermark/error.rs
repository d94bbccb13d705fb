//! The single error type of the watermark layer.

/// Errors of the watermark layer.
///
/// None of them carries key bytes. Parameter errors come from configuration (fail at startup);
/// [`WatermarkError::VocabTooLarge`] and [`WatermarkError::NoKeys`] are caller bugs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WatermarkError {
    /// The secret is shorter than [`super::MIN_SECRET_LEN`] bytes (128 bits).
    #[error("watermark secret too short: {len} bytes, at least 16 required")]
    SecretTooShort {
        /// Length that was given.
        len: usize,
    },
    /// The secret is longer than [`super::SECRET_LEN`] bytes.
    #[error("watermark secret too long: {len} bytes, at most 32 accepted")]
    SecretTooLong {
        /// Length that was given.
        len: usize,
    },
    /// The secret is all zeros or one repeated byte: a placeholder, not a key.
    #[error("watermark secret is a constant byte pattern")]
    WeakSecret,
    /// A key id is empty, too long or uses characters outside `[A-Za-z0-9._:@+-]`.
    #[error("invalid watermark key id (1..=64 bytes of [A-Za-z0-9._:@+-])")]
    InvalidKeyId,
    /// `context_width` outside `1..=8`.
    #[error("watermark context width {0} outside 1..=8")]
    InvalidContextWidth(usize),
    /// `gamma` not strictly between 0 and 1.
    #[error("watermark gamma {0} outside (0, 1)")]
    InvalidGamma(f64),
    /// `delta` not a finite number > 0.
    #[error("watermark delta {0} must be finite and > 0")]
    InvalidDelta(f32),
    /// The logits slice has more entries than `u32` token ids can name.
    #[error("vocabulary of {0} entries does not fit u32 token ids")]
    VocabTooLarge(usize),
    /// `detect_any` was called with no key.
    #[error("no watermark key to test")]
    NoKeys,
}
