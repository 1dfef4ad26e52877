//! `multipart/form-data` of `POST /chat/upload-file/`, parsed with `multer` inside the plugin
//! (the body is already fully read and size-limited by the daemon, so it is polled to
//! completion at once), and the client file name check.

use bytes::Bytes;
use std::convert::Infallible;
use std::future::Future;
use std::task::{Context, Poll, Waker};

/// The form fields of chat.md "Upload a File" (plus `session_id`, which agents must send).
#[derive(Debug, Default)]
pub struct UploadForm {
    /// (client file name, bytes) of the `file` field.
    pub file: Option<(Option<String>, Vec<u8>)>,
    pub message: Option<String>,
    pub uploaded_by_end_user: Option<String>,
    pub uploaded_by_agent: Option<String>,
    pub session_id: Option<String>,
}

/// Drive a future whose input is already in memory. `multer` never waits on a ready stream;
/// should it ever, the event's epoch deadline ends the loop.
fn run_ready<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// Parse the form. Err: a client-facing reason (bad content type, malformed body, a field
/// given twice).
pub fn parse(content_type: &str, body: Vec<u8>) -> Result<UploadForm, String> {
    let boundary =
        multer::parse_boundary(content_type).map_err(|e| format!("Content-Type must be multipart/form-data: {e}"))?;
    let stream = futures_util::stream::once(async move { Ok::<Bytes, Infallible>(Bytes::from(body)) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    run_ready(async move {
        let mut form = UploadForm::default();
        while let Some(field) = multipart.next_field().await.map_err(|e| format!("malformed multipart body: {e}"))? {
            let name = field.name().unwrap_or_default().to_string();
            let file_name = field.file_name().map(str::to_string);
            let data = field.bytes().await.map_err(|e| format!("malformed multipart body: {e}"))?;
            let text = || String::from_utf8(data.to_vec()).map_err(|_| format!("field `{name}` must be UTF-8 text"));
            let slot = match name.as_str() {
                "file" => {
                    if form.file.replace((file_name, data.to_vec())).is_some() {
                        return Err("field `file` was given twice".to_string());
                    }
                    continue;
                }
                "message" => &mut form.message,
                "uploaded_by_end_user" => &mut form.uploaded_by_end_user,
                "uploaded_by_agent" => &mut form.uploaded_by_agent,
                "session_id" => &mut form.session_id,
                _ => continue,
            };
            let value = text()?;
            let value = value.trim();
            // `null` and empty mean "not given" (the spec allows `message` to be null).
            if !value.is_empty() && value != "null" && slot.replace(value.to_string()).is_some() {
                return Err(format!("field `{name}` was given twice"));
            }
        }
        Ok(form)
    })
}

/// Check a client file name: refused when empty, longer than `max_bytes` bytes, `.`/`..` or
/// holding `..`, a path separator (`/`, `\`), NUL or any other control character.
pub fn check_file_name(name: &str, max_bytes: usize) -> Result<&str, String> {
    if name.len() > max_bytes {
        return Err(format!("file_name is longer than {max_bytes} bytes"));
    }
    let bad = name.is_empty()
        || name.contains("..")
        || name == "."
        || name.chars().any(|c| c == '/' || c == '\\' || c.is_control());
    if bad {
        return Err("file_name must be a plain name: no path separators, `..`, NUL or control characters".into());
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_refused() {
        for bad in ["../etc/passwd", "a/b.png", "a\\b.png", "x\0.png", "new\nline.png", "..", ".", "", "a..b"] {
            assert!(check_file_name(bad, 255).is_err(), "{bad:?}");
        }
        assert_eq!(check_file_name("report 2025.pdf", 255), Ok("report 2025.pdf"));
        assert!(check_file_name(&"a".repeat(256), 255).is_err());
        assert_eq!(check_file_name(&"a".repeat(255), 255).map(str::len), Ok(255));
    }

    #[test]
    fn parses_fields() {
        let body = b"--XX\r\nContent-Disposition: form-data; name=\"message\"\r\n\r\nnull\r\n--XX\r\n\
Content-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\nDATA\r\n--XX--\r\n";
        let form = parse("multipart/form-data; boundary=XX", body.to_vec()).unwrap();
        assert_eq!(form.message, None);
        assert_eq!(form.file, Some((Some("a.png".into()), b"DATA".to_vec())));
    }
}
