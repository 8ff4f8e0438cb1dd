//! The built-in fixture: organization `monogram-labs` with libraries `barcelona` (250 assets)
//! and `lisbon` (40 assets), and the demo API keys. Everything is deterministic: the same ids,
//! names, tags and timestamps on every start and after every `POST /__mock/reset`.

use super::state::{Access, ApiKey, Asset, Data, Library, Org, Uploader};

pub const ORG_ID: &str = "monogram-labs";
pub const ORG_NAME: &str = "Monogram Labs";
pub const PLAN: &str = "pro";

/// `(library id, name, asset id prefix, asset count, places used for names)`.
pub const LIBRARIES: &[(&str, &str, &str, usize, &[&str])] = &[
    (
        "barcelona",
        "Barcelona",
        "bcn",
        250,
        &[
            "Sagrada Familia",
            "Park Guell",
            "Barceloneta",
            "Gothic Quarter",
            "Casa Batllo",
            "Montjuic",
            "El Born",
            "La Rambla",
        ],
    ),
    (
        "lisbon",
        "Lisbon",
        "lis",
        40,
        &[
            "Alfama",
            "Belem Tower",
            "Tram 28",
            "Bairro Alto",
            "Praca do Comercio",
            "LX Factory",
        ],
    ),
];

/// The fixture's tag vocabulary (the tests check every tag is in use); which asset carries
/// which tag is a function of its number.
#[cfg(test)]
pub const TAGS: &[&str] = &["architecture", "beach", "night", "people", "sunset"];

/// Read key, every library.
pub const KEY_READ: &str = "demo-read";
/// Write key, every library.
pub const KEY_WRITE: &str = "demo-write";
/// Read key, `barcelona` only.
pub const KEY_BARCELONA: &str = "demo-barcelona";

/// 2025-01-01T00:00:00Z in unix ms: the first fixture asset's `created`.
const EPOCH_MS: u64 = 1_735_689_600_000;

const BLURHASHES: &[&str] = &[
    "LEHV6nWB2yk8pyo0adR*.7kCMdnj",
    "LKO2?U%2Tw=w]~RBVZRi};RPxuwH",
    "L6PZfSi_.AyE_3t7t7R**0o#DgR4",
    "LGF5]+Yk^6#M@-5c,1J5@[or[Q6.",
    "L9AS}j^-0ME2~qRjRjoz0KNG%2s.",
];

/// Tags of asset number `n` (1-based within its library).
pub fn tags_for(n: usize) -> Vec<String> {
    let mut t = Vec::new();
    if n.is_multiple_of(3) {
        t.push("architecture");
    }
    if n % 4 == 1 {
        t.push("beach");
    }
    if n % 5 == 2 {
        t.push("night");
    }
    if n.is_multiple_of(2) {
        t.push("people");
    }
    if n % 10 == 7 {
        t.push("sunset");
    }
    t.into_iter().map(String::from).collect()
}

/// CDN-style URLs keyed by asset id, so they survive transfers between libraries.
pub fn urls(id: &str, ext: &str) -> (String, String, String, String) {
    let base = format!("https://cdn.raster.app/{ORG_ID}/{id}.{ext}");
    (
        base.clone(),
        format!("{base}?w=400"),
        format!("{base}?w=800"),
        format!("{base}?w=400&blur=200"),
    )
}

fn fixture_asset(lib: &str, prefix: &str, places: &[&str], n: usize, global: usize) -> Asset {
    let id = format!("{prefix}-{n:04}");
    let place = places[(n - 1) % places.len()];
    let png = n.is_multiple_of(10);
    let ext = if png { "png" } else { "jpg" };
    let (url, thumb, thumb_high, blurred) = urls(&id, ext);
    let portrait = n % 3 == 1;
    let tags = tags_for(n);
    let city = lib[..1].to_ascii_uppercase() + &lib[1..];
    let description = if tags.is_empty() {
        format!("{place}, {city}.")
    } else {
        format!("{place}, {city}: {}.", tags.join(", "))
    };
    let created = EPOCH_MS + global as u64 * 3_600_000;
    Asset {
        id: id.clone(),
        width: Some(if portrait { 4000 } else { 6000 }),
        height: Some(if portrait { 6000 } else { 4000 }),
        name: format!("{place} {n:03}.{ext}"),
        library_id: lib.to_string(),
        blurhash: Some(BLURHASHES[n % BLURHASHES.len()].to_string()),
        url,
        thumb_url: thumb,
        thumb_high_url: Some(thumb_high),
        thumb_url_blurred: blurred,
        views: Vec::new(),
        kind: "main".to_string(),
        description: Some(description),
        tags,
        content_type: if png { "image/png" } else { "image/jpeg" }.to_string(),
        size: 1_500_000 + (n as u64 * 7_919 * 31) % 3_000_000,
        created,
        updated: created,
        uploaded_by: Uploader {
            name: Some(
                if n.is_multiple_of(2) {
                    "Ana Ribeiro"
                } else {
                    "Jordi Puig"
                }
                .to_string(),
            ),
        },
        trashed: false,
    }
}

/// A fresh copy of the fixture world.
pub fn fixture() -> Data {
    let mut d = Data {
        orgs: vec![Org {
            id: ORG_ID.into(),
            name: ORG_NAME.into(),
            plan: PLAN.into(),
        }],
        next_upload: 1,
        next_anon: 1,
        ..Data::default()
    };
    let mut global = 0;
    for (lib, name, prefix, count, places) in LIBRARIES {
        d.libraries.push(Library {
            id: lib.to_string(),
            org: ORG_ID.into(),
            name: name.to_string(),
        });
        for n in 1..=*count {
            d.push_asset(fixture_asset(lib, prefix, places, n, global));
            global += 1;
        }
    }
    for (key, access, libs) in [
        (KEY_READ, Access::Read, None),
        (KEY_WRITE, Access::Write, None),
        (
            KEY_BARCELONA,
            Access::Read,
            Some(vec!["barcelona".to_string()]),
        ),
    ] {
        d.keys.insert(
            key.to_string(),
            ApiKey {
                org: ORG_ID.into(),
                access,
                libraries: libs,
            },
        );
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_has_the_contract_counts_and_ids() {
        let d = fixture();
        assert_eq!(d.live_assets("barcelona").count(), 250);
        assert_eq!(d.live_assets("lisbon").count(), 40);
        assert!(d.live_asset("barcelona", "bcn-0001").is_some());
        assert!(d.live_asset("lisbon", "lis-0040").is_some());
        assert!(d.live_asset("lisbon", "bcn-0001").is_none());
        for t in TAGS {
            assert!(d.tag_counts("lisbon").iter().any(|(id, _)| id == t));
        }
    }
}
