//! The write handlers of the simulated Raster API: library create / rename, asset delete, tag /
//! untag, description, transfer and multipart upload. Each changes [`Data`] under the write
//! lock, so later reads see the change.

use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use serde_json::{json, Value};

use super::fixtures::urls;
use super::routes::*;
use super::state::{
    now_ms, slugify, valid_slug, Access, ApiKey, Asset, Data, Library, Org, Uploader,
};

pub(super) fn create_anonymous(data: &RwLock<Data>, call: &ApiCall) -> Result<Reply, ApiError> {
    let body = if call.body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Map::new()
    } else {
        json_body(call)?
    };
    let email = match body.get("email") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.contains('@') => Some(s.clone()),
        _ => return Err(ApiError::bad_input("email must be an email address.")),
    };
    let name = match body.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        _ => "Sandbox".to_string(),
    };
    let mut d = data.write();
    let n = d.next_anon;
    d.next_anon += 1;
    let org = format!("sandbox-org-{n}");
    let mut lib = format!("sandbox-{n}");
    while d.slug_taken(&lib) {
        lib.push('x');
    }
    let api_key = format!("sandbox-key-{n}-{:016x}", rand::random::<u64>());
    d.orgs.push(Org {
        id: org.clone(),
        name: name.clone(),
        plan: "free".into(),
    });
    d.libraries.push(Library {
        id: lib.clone(),
        org: org.clone(),
        name,
    });
    d.keys.insert(
        api_key.clone(),
        ApiKey {
            org: org.clone(),
            access: Access::Write,
            libraries: Some(vec![lib.clone()]),
        },
    );
    let expires = SystemTime::now() + Duration::from_secs(7 * 24 * 3600);
    ok(
        200,
        json!({
            "organizationId": org,
            "libraryId": lib,
            "apiKey": api_key,
            "claimUrl": format!("https://raster.app/claim/{org}"),
            "expiresAt": humantime::format_rfc3339_seconds(expires).to_string(),
            "emailSent": email.is_some(),
        }),
        true,
    )
}

pub(super) fn create_library(
    data: &RwLock<Data>,
    org: &str,
    call: &ApiCall,
) -> Result<Reply, ApiError> {
    let body = json_body(call)?;
    let name = string_field(&body, "name")?;
    let slug = match body.get("slug") {
        None | Some(Value::Null) => slugify(&name),
        Some(Value::String(s)) => s.clone(),
        _ => return Err(ApiError::bad_input("slug must be a string.")),
    };
    if !valid_slug(&slug) {
        return Err(ApiError::bad_input(
            "slug must be lowercase letters, digits and dashes.",
        ));
    }
    let mut d = data.write();
    if d.slug_taken(&slug) {
        return Err(ApiError::new(
            409,
            "LIBRARY_URL_TAKEN",
            format!("The library URL {slug} is already taken."),
        ));
    }
    let lib = Library {
        id: slug,
        org: org.to_string(),
        name,
    };
    let j = d.library_json(&lib);
    d.libraries.push(lib);
    ok(201, j, true)
}

pub(super) fn rename_library(
    data: &RwLock<Data>,
    org: &str,
    lib: &str,
    call: &ApiCall,
) -> Result<Reply, ApiError> {
    let body = json_body(call)?;
    let name = string_field(&body, "name")?;
    let mut d = data.write();
    let l = d
        .library_mut(org, lib)
        .ok_or_else(|| ApiError::not_found(format!("Library {lib} was not found.")))?;
    l.name = name;
    let l = l.clone();
    ok(200, d.library_json(&l), true)
}

pub(super) fn delete_assets(
    data: &RwLock<Data>,
    lib: &str,
    call: &ApiCall,
) -> Result<Reply, ApiError> {
    let body = json_body(call)?;
    let ids = string_list(&body, "ids", MAX_IDS)?;
    let mut d = data.write();
    let mut done = Vec::new();
    for id in ids {
        if let Some(a) = d.live_asset_mut(lib, &id) {
            a.trashed = true;
            a.touch();
            done.push(id);
        }
    }
    let n = done.len();
    ok(
        200,
        json!({
            "success": true,
            "message": format!("Moved {n} asset(s) to trash."),
            "ids": done,
        }),
        n > 0,
    )
}

pub(super) fn tag_assets(
    data: &RwLock<Data>,
    lib: &str,
    untag: bool,
    call: &ApiCall,
) -> Result<Reply, ApiError> {
    let body = json_body(call)?;
    let ids = string_list(&body, "assetIds", MAX_IDS)?;
    let tags: Vec<String> = string_list(&body, "tags", MAX_TAGS_PER_CALL)?
        .into_iter()
        .map(|t| t.trim().to_string())
        .collect();
    let mut d = data.write();
    let mut count = 0u64;
    for id in ids {
        let Some(a) = d.live_asset_mut(lib, &id) else {
            continue;
        };
        let before = a.tags.len();
        if untag {
            a.tags
                .retain(|t| !tags.iter().any(|x| x.eq_ignore_ascii_case(t)));
        } else {
            for t in &tags {
                if !a.has_tag(t) {
                    a.tags.push(t.clone());
                }
            }
        }
        if a.tags.len() != before {
            a.touch();
        }
        count += 1;
    }
    let field = if untag {
        "untaggedCount"
    } else {
        "taggedCount"
    };
    ok(200, json!({ field: count }), count > 0)
}

pub(super) fn describe(
    data: &RwLock<Data>,
    lib: &str,
    id: &str,
    call: &ApiCall,
) -> Result<Reply, ApiError> {
    let body = json_body(call)?;
    let description = match body.get("description") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(ApiError::bad_input("description must be a string.")),
    };
    let mut d = data.write();
    let a = d
        .live_asset_mut(lib, id)
        .ok_or_else(|| ApiError::not_found(format!("Asset {id} was not found.")))?;
    a.description = Some(description.clone());
    a.touch();
    ok(
        200,
        json!({"assetId": id, "description": description}),
        true,
    )
}

pub(super) fn transfer(
    data: &RwLock<Data>,
    key: &ApiKey,
    lib: &str,
    call: &ApiCall,
) -> Result<Reply, ApiError> {
    let body = json_body(call)?;
    let target = string_field(&body, "targetLibraryId")?;
    let ids = string_list(&body, "assetIds", MAX_IDS)?;
    let mut d = data.write();
    check_library(&d, key, &target)?;
    if target == lib {
        return Err(ApiError::bad_input(
            "targetLibraryId must differ from the source library.",
        ));
    }
    let mut count = 0u64;
    for id in ids {
        if let Some(a) = d.live_asset_mut(lib, &id) {
            a.library_id = target.clone();
            a.touch();
            count += 1;
        }
    }
    ok(
        200,
        json!({
            "transferredCount": count,
            "sourceLibraryId": lib,
            "targetLibraryId": target,
        }),
        count > 0,
    )
}

/// One file part of a multipart body.
pub(super) struct Part<'a> {
    filename: Option<String>,
    content_type: Option<String>,
    data: &'a [u8],
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    (from..=hay.len() - needle.len()).find(|&i| &hay[i..i + needle.len()] == needle)
}

fn header_param(header: &str, name: &str) -> Option<String> {
    header.split(';').skip(1).find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

/// Splits a `multipart/form-data` body into its parts (RFC 7578, simplified).
pub(super) fn multipart<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, ApiError> {
    let delim = format!("--{boundary}");
    let delim = delim.as_bytes();
    let bad = || ApiError::bad_input("Malformed multipart body.");
    let mut pos = find(body, delim, 0).ok_or_else(bad)? + delim.len();
    let mut parts = Vec::new();
    loop {
        if body[pos..].starts_with(b"--") {
            break;
        }
        let head_start = pos + 2; // CRLF after the delimiter
        let head_end = find(body, b"\r\n\r\n", head_start).ok_or_else(bad)?;
        let next = find(body, delim, head_end + 4).ok_or_else(bad)?;
        let data_end = next.saturating_sub(2).max(head_end + 4);
        let head = String::from_utf8_lossy(body.get(head_start..head_end).ok_or_else(bad)?);
        let mut filename = None;
        let mut content_type = None;
        for line in head.split("\r\n") {
            if let Some((k, v)) = line.split_once(':') {
                if k.trim().eq_ignore_ascii_case("content-disposition") {
                    filename = header_param(v, "filename");
                } else if k.trim().eq_ignore_ascii_case("content-type") {
                    content_type = Some(v.trim().to_string());
                }
            }
        }
        parts.push(Part {
            filename,
            content_type,
            data: &body[head_end + 4..data_end],
        });
        pos = next + delim.len();
        if pos >= body.len() {
            break;
        }
    }
    Ok(parts)
}

fn guess_content_type(name: &str) -> &'static str {
    let ext = name.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "heic" => "image/heic",
        "svg" => "image/svg+xml",
        "tif" | "tiff" => "image/tiff",
        _ => "application/octet-stream",
    }
}

pub(super) fn upload(data: &RwLock<Data>, lib: &str, call: &ApiCall) -> Result<Reply, ApiError> {
    let ct = call.content_type.unwrap_or("");
    if !ct
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        return Err(ApiError::bad_input(
            "Uploads must be multipart/form-data with one or more files parts.",
        ));
    }
    let boundary = header_param(ct, "boundary")
        .filter(|b| !b.is_empty())
        .ok_or_else(|| ApiError::bad_input("multipart boundary missing."))?;
    let parts = multipart(call.body, &boundary)?;
    let files: Vec<&Part> = parts.iter().filter(|p| p.filename.is_some()).collect();
    if files.is_empty() {
        return Err(ApiError::bad_input("No files in the upload."));
    }
    if files.len() > MAX_UPLOAD_FILES {
        return Err(ApiError::bad_input(format!(
            "At most {MAX_UPLOAD_FILES} files per upload."
        )));
    }
    let mut d = data.write();
    let now = now_ms();
    let mut created = Vec::new();
    for p in files {
        let n = d.next_upload;
        d.next_upload += 1;
        let id = format!("ast-{n:06}");
        let name = p.filename.clone().unwrap_or_default();
        let content_type = p
            .content_type
            .clone()
            .filter(|c| c != "application/octet-stream")
            .unwrap_or_else(|| guess_content_type(&name).to_string());
        let ext = name
            .rsplit('.')
            .next()
            .unwrap_or("bin")
            .to_ascii_lowercase();
        let (url, thumb, thumb_high, blurred) = urls(&id, &ext);
        let a = Asset {
            id: id.clone(),
            width: None,
            height: None,
            name,
            library_id: lib.to_string(),
            blurhash: None,
            url,
            thumb_url: thumb,
            thumb_high_url: Some(thumb_high),
            thumb_url_blurred: blurred,
            views: Vec::new(),
            kind: "main".into(),
            description: None,
            tags: Vec::new(),
            content_type,
            size: p.data.len() as u64,
            created: now,
            updated: now,
            uploaded_by: Uploader {
                name: Some("API".into()),
            },
            trashed: false,
        };
        created.push(a.clone());
        d.push_asset(a);
    }
    let n = created.len();
    ok(
        200,
        json!({
            "responseText": format!("Uploaded {n} file(s)."),
            "assets": created,
        }),
        true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_counts_file_parts() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.jpg\"\r\nContent-Type: image/jpeg\r\n\r\nAAAA\r\n--XyZ\r\nContent-Disposition: form-data; name=\"files\"; filename=\"b.png\"\r\n\r\nBB\r\n--XyZ--\r\n";
        let parts = multipart(body, "XyZ").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].data, b"AAAA");
        assert_eq!(parts[1].filename.as_deref(), Some("b.png"));
        assert_eq!(parts[1].data, b"BB");
    }
}
