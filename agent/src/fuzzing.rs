//! Entry points for the fuzz targets (`fuzz/`) into parsers that are not public
//! API. Compiled only with the `fuzzing` feature, and hidden from the docs.

/// Whether the `/ws` query string `query` passes the check of token `token`.
pub fn token_allows(token: &str, query: &str) -> bool {
    crate::server::token_allows(token, query)
}

/// A DRM device's PCI id attribute ("0x1002\n").
pub fn parse_pci_id(text: &str) -> Option<u16> {
    crate::collect::gpu::sysfs::parse_pci_id(text)
}

/// The number in a hwmon entry name ("temp12_input" → 12).
pub fn hwmon_number(name: &str, prefix: &str, suffix: &str) -> Option<u32> {
    crate::collect::temperature::hwmon::numbered(name, prefix, suffix)
}
