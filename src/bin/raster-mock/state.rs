//! The mock's data model: organizations, libraries, assets and API keys, plus the mutations the
//! write routes perform. Everything lives behind one lock in [`crate::server::MockService`].

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{json, Value};

/// What an API key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// An API key's scope (the key itself is the map key in [`Data::keys`]).
#[derive(Clone, Debug)]
pub struct ApiKey {
    pub org: String,
    pub access: Access,
    /// `None`: every library of the organization (including ones created later).
    pub libraries: Option<Vec<String>>,
}

impl ApiKey {
    pub fn can_reach(&self, library: &str) -> bool {
        self.libraries
            .as_ref()
            .is_none_or(|l| l.iter().any(|x| x == library))
    }
}

#[derive(Clone, Debug)]
pub struct Org {
    pub id: String,
    pub name: String,
    pub plan: String,
}

#[derive(Clone, Debug)]
pub struct Library {
    pub id: String,
    pub org: String,
    pub name: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Uploader {
    pub name: Option<String>,
}

/// One asset, serialized with Raster's public field names.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Asset {
    pub id: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub name: String,
    pub library_id: String,
    pub blurhash: Option<String>,
    pub url: String,
    pub thumb_url: String,
    pub thumb_high_url: Option<String>,
    pub thumb_url_blurred: String,
    pub views: Vec<Value>,
    #[serde(rename = "type")]
    pub kind: String,
    pub description: Option<String>,
    pub tags: Vec<String>,
    pub content_type: String,
    pub size: u64,
    pub created: u64,
    pub updated: u64,
    pub uploaded_by: Uploader,
    /// Soft-deleted (in the library trash): hidden from every read.
    #[serde(skip)]
    pub trashed: bool,
}

impl Asset {
    /// Bumps `updated` to now (strictly increasing, so two quick edits still differ).
    pub fn touch(&mut self) {
        self.updated = now_ms().max(self.updated + 1);
    }

    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t.eq_ignore_ascii_case(tag))
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The whole mutable world of the mock.
#[derive(Clone, Debug, Default)]
pub struct Data {
    pub orgs: Vec<Org>,
    pub libraries: Vec<Library>,
    pub assets: Vec<Asset>,
    pub index: HashMap<String, usize>,
    pub keys: HashMap<String, ApiKey>,
    pub next_upload: u64,
    pub next_anon: u64,
}

impl Data {
    pub fn org(&self, id: &str) -> Option<&Org> {
        self.orgs.iter().find(|o| o.id == id)
    }

    pub fn library(&self, org: &str, id: &str) -> Option<&Library> {
        self.libraries.iter().find(|l| l.org == org && l.id == id)
    }

    pub fn library_mut(&mut self, org: &str, id: &str) -> Option<&mut Library> {
        self.libraries
            .iter_mut()
            .find(|l| l.org == org && l.id == id)
    }

    /// Library ids of `org` that `key` can reach, in creation order.
    pub fn reachable_libraries<'a>(&'a self, key: &'a ApiKey) -> impl Iterator<Item = &'a Library> {
        self.libraries
            .iter()
            .filter(move |l| l.org == key.org && key.can_reach(&l.id))
    }

    pub fn push_asset(&mut self, asset: Asset) {
        self.index.insert(asset.id.clone(), self.assets.len());
        self.assets.push(asset);
    }

    /// A live (not trashed) asset of `library`.
    pub fn live_asset(&self, library: &str, id: &str) -> Option<&Asset> {
        let a = &self.assets[*self.index.get(id)?];
        (a.library_id == library && !a.trashed).then_some(a)
    }

    pub fn live_asset_mut(&mut self, library: &str, id: &str) -> Option<&mut Asset> {
        let i = *self.index.get(id)?;
        let a = &mut self.assets[i];
        (a.library_id == library && !a.trashed).then_some(a)
    }

    pub fn live_assets<'a>(&'a self, library: &'a str) -> impl Iterator<Item = &'a Asset> {
        self.assets
            .iter()
            .filter(move |a| a.library_id == library && !a.trashed)
    }

    /// Tag usage counts of a library's live assets, most used first (ties by name).
    pub fn tag_counts(&self, library: &str) -> Vec<(String, u64)> {
        let mut counts: HashMap<&str, u64> = HashMap::new();
        for a in self.live_assets(library) {
            for t in &a.tags {
                *counts.entry(t.as_str()).or_default() += 1;
            }
        }
        let mut v: Vec<(String, u64)> = counts
            .into_iter()
            .map(|(k, c)| (k.to_string(), c))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }

    /// The `Library` schema: `{id, name, assetsCount, photosCount, trashCount, tags}`.
    pub fn library_json(&self, lib: &Library) -> Value {
        let mut assets = 0u64;
        let mut photos = 0u64;
        let mut trash = 0u64;
        for a in self.assets.iter().filter(|a| a.library_id == lib.id) {
            if a.trashed {
                trash += 1;
            } else {
                assets += 1;
                if a.content_type.starts_with("image/") {
                    photos += 1;
                }
            }
        }
        json!({
            "id": lib.id,
            "name": lib.name,
            "assetsCount": assets,
            "photosCount": photos,
            "trashCount": trash,
            "tags": tags_json(self.tag_counts(&lib.id)),
        })
    }

    pub fn slug_taken(&self, slug: &str) -> bool {
        self.libraries.iter().any(|l| l.id == slug)
    }
}

/// The `Tag` schema list: `[{id, count, type}]`.
pub fn tags_json(counts: Vec<(String, u64)>) -> Value {
    Value::Array(
        counts
            .into_iter()
            .map(|(id, count)| json!({"id": id, "count": count, "type": "tag"}))
            .collect(),
    )
}

/// Lowercase, ASCII letters/digits, runs of anything else become one `-`.
pub fn slugify(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    out
}

pub fn valid_slug(slug: &str) -> bool {
    !slug.is_empty()
        && slug.len() <= 64
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !slug.starts_with('-')
        && !slug.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugify_makes_url_safe_slugs() {
        assert_eq!(slugify("Porto Nights!"), "porto-nights");
        assert_eq!(slugify("  São Paulo  2026 "), "s-o-paulo-2026");
        assert!(valid_slug(&slugify("A b")));
        assert!(!valid_slug("Bad Slug"));
    }
}
