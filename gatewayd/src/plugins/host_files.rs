//! The `files` host interface: a plugin's media directory, written and read by the daemon
//! (DESIGN section 1: a plugin never opens a file itself).
//!
//! Needs `[plugins.<name>.capabilities.files]` (`dir`, `max_bytes`, `allowed_types`). Names are
//! generated here (`<32 hex digits>.<extension of the sniffed type>`), so a client-chosen name
//! never reaches the file system; `get` accepts only names of that shape. The type comes from
//! the content's magic bytes (the `infer` crate), never from a client's header or file name.
//! `delete` removes a file by the same kind of name (a plugin's retention, e.g. chat's files
//! removed when their session ends).

use super::bindings::gatewayd::plugin::addresses;
use super::bindings::gatewayd::plugin::files::{self, StoredFile};
use super::host::HostState;
use crate::config::FilesCapability;
use std::path::PathBuf;

impl HostState {
    fn files_capability(&self) -> Result<FilesCapability, String> {
        self.files_capability_config()
            .cloned()
            .ok_or_else(|| "files_disabled: this plugin has no files capability".to_string())
    }
}

/// The sniffed MIME type and extension of `data`, if the content is recognised.
pub fn sniff(data: &[u8]) -> Option<(&'static str, &'static str)> {
    infer::get(data).map(|t| (t.mime_type(), t.extension()))
}

/// True for names `put` generates: 32 lower-case hex digits, `.`, 1-8 ASCII alphanumerics.
pub fn is_generated_name(name: &str) -> bool {
    let Some((stem, ext)) = name.split_once('.') else { return false };
    stem.len() == 32
        && stem.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && (1..=8).contains(&ext.len())
        && ext.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Write `data` to `dir/name` atomically: a hidden `.part` file, synced, then renamed. On any
/// failure (a full disk included) the partial file is removed, so nothing half-written is ever
/// left under the directory.
async fn write_new(dir: &PathBuf, name: &str, data: &[u8]) -> std::io::Result<()> {
    tokio::fs::create_dir_all(dir).await?;
    let tmp = dir.join(format!(".{name}.part"));
    let written = write_part(&tmp, data).await;
    let result = match written {
        Ok(()) => tokio::fs::rename(&tmp, dir.join(name)).await,
        Err(e) => Err(e),
    };
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}

async fn write_part(tmp: &PathBuf, data: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut f = tokio::fs::OpenOptions::new().write(true).create_new(true).open(tmp).await?;
    f.write_all(data).await?;
    // tokio's `File` writes in the background: a failed last write (a full disk) is reported
    // by `flush`, not by `sync_all`. Without this, a truncated file was kept and acknowledged.
    f.flush().await?;
    f.sync_all().await
}

/// The error `put` reports for a failed write: `no_space` when the file system is full or
/// over quota (the client can be told to retry later), `io` otherwise.
fn write_error(e: &std::io::Error) -> String {
    let full = matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
        || matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT));
    if full {
        "no_space: the media storage is full".to_string()
    } else {
        "io: the file could not be stored".to_string()
    }
}

impl files::Host for HostState {
    async fn put(&mut self, data: Vec<u8>) -> Result<StoredFile, String> {
        let cap = self.files_capability()?;
        if data.len() as u64 > cap.max_bytes {
            return Err(format!("too_large: the file exceeds {} bytes", cap.max_bytes));
        }
        let (mime, ext) =
            sniff(&data).ok_or_else(|| "unknown_type: the file's content is not recognised".to_string())?;
        if !cap.allowed_types.is_empty() && !cap.allowed_types.iter().any(|t| t == mime) {
            return Err(format!("type_not_allowed: {mime} files are not accepted"));
        }
        let name = format!("{}.{ext}", uuid::Uuid::new_v4().simple());
        write_new(&cap.dir, &name, &data).await.map_err(|e| {
            tracing::error!(dir = %cap.dir.display(), error = %e, "storing a plugin file failed");
            write_error(&e)
        })?;
        Ok(StoredFile { name, content_type: mime.to_string(), size: data.len() as u64 })
    }

    async fn get(&mut self, name: String) -> Result<(StoredFile, Vec<u8>), String> {
        let cap = self.files_capability()?;
        if !is_generated_name(&name) {
            return Err("not_found: no such file".into());
        }
        let data = match tokio::fs::read(cap.dir.join(&name)).await {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err("not_found: no such file".into()),
            Err(e) => {
                tracing::error!(dir = %cap.dir.display(), error = %e, "reading a plugin file failed");
                return Err("io: the file could not be read".into());
            }
        };
        let content_type = sniff(&data).map(|(m, _)| m).unwrap_or("application/octet-stream").to_string();
        Ok((StoredFile { name, content_type, size: data.len() as u64 }, data))
    }

    async fn delete(&mut self, name: String) -> Result<bool, String> {
        let cap = self.files_capability()?;
        if !is_generated_name(&name) {
            return Err("not_found: no such file".into());
        }
        match tokio::fs::remove_file(cap.dir.join(&name)).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => {
                tracing::error!(dir = %cap.dir.display(), error = %e, "removing a plugin file failed");
                Err("io: the file could not be removed".into())
            }
        }
    }
}

/// `addresses`: group operations on the bus, in the calling plugin's namespace.
impl addresses::Host for HostState {
    fn close_all(&mut self, address: String, code: u16, reason: String) -> u32 {
        let code = if (1000..=4999).contains(&code) { code } else { 1011 };
        let Some(plugin) = self.plugin() else { return 0 };
        plugin.services.bus.close_to(&plugin.name, &address, code, &reason)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_generated_names_are_read() {
        assert!(super::is_generated_name("0123456789abcdef0123456789abcdef.png"));
        assert!(!super::is_generated_name("../0123456789abcdef0123456789abcdef.png"));
        assert!(!super::is_generated_name("0123456789abcdef0123456789abcdef.png/.."));
        assert!(!super::is_generated_name("gatewayd.db"));
    }

    #[test]
    fn a_full_disk_is_named() {
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(super::write_error(&full).starts_with("no_space: "));
        let other = std::io::Error::from_raw_os_error(libc::EACCES);
        assert!(super::write_error(&other).starts_with("io: "));
    }

    #[test]
    fn type_comes_from_content() {
        assert_eq!(super::sniff(b"%PDF-1.7\n...").map(|t| t.0), Some("application/pdf"));
        assert_eq!(super::sniff(b"plain words, no magic bytes"), None);
        assert_eq!(super::sniff(b"<html><script>x</script></html>").map(|t| t.0), Some("text/html"));
    }
}
