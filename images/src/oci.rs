//! One-layer OCI image archives (image-spec v1.1 layout in a tar): what
//! `ctr images import`, `docker load`, `skopeo copy oci-archive:` read.
use std::{collections::BTreeMap, fs, path::Path};

use serde_json::{Value, json};

use crate::{Error, Result, Rootfs, rootfs::MTIME};

const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// The annotation containerd names an imported image by.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// How a container of the image runs: the image config's `config` object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `uid:gid`.
    pub user: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub exposed_ports: Vec<u16>,
}

/// `sha256:<hex>` of `data`.
pub fn digest(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut hex = String::with_capacity(64);
    for b in d.as_ref() {
        hex.push_str(&format!("{b:02x}"));
    }
    format!("sha256:{hex}")
}

/// The image's `architecture`, as OCI names this machine's (`amd64`, `arm64`).
pub fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// What [`write_archive`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// The manifest's digest (what a registry would call the image).
    pub manifest: String,
    /// The config's digest (what `crictl images` and the kubelet call the image id).
    pub config: String,
    pub bytes: u64,
}

/// The image config document.
pub fn config_json(config: &Config, layer_diff_id: &str) -> Value {
    let created = "1970-01-01T00:00:00Z";
    debug_assert_eq!(MTIME, 0, "created is the layer's time");
    let ports: BTreeMap<String, Value> = config
        .exposed_ports
        .iter()
        .map(|p| (format!("{p}/tcp"), json!({})))
        .collect();
    let mut inner = json!({
        "User": config.user,
        "Env": config.env,
        "Entrypoint": config.entrypoint,
        "WorkingDir": "/",
    });
    if !config.cmd.is_empty() {
        inner["Cmd"] = json!(config.cmd);
    }
    if !ports.is_empty() {
        inner["ExposedPorts"] = json!(ports);
    }
    json!({
        "created": created,
        "architecture": architecture(),
        "os": "linux",
        "config": inner,
        "rootfs": { "type": "layers", "diff_ids": [layer_diff_id] },
        "history": [{ "created": created, "created_by": "nodepulse images (cargo xtask image)" }],
    })
}

/// Writes `rootfs` as a one-layer image named `reference`
/// (`registry/repository:tag`) to the OCI archive `out`.
pub fn write_archive(
    out: &Path,
    reference: &str,
    config: &Config,
    rootfs: &Rootfs,
) -> Result<Written> {
    let tag = reference
        .rsplit_once(':')
        .filter(|(repo, tag)| !tag.contains('/') && !repo.is_empty())
        .map(|(_, tag)| tag)
        .ok_or_else(|| Error::Invalid {
            path: reference.to_string(),
            reason: "an image reference needs a tag (`name:tag`)".into(),
        })?;
    let layer = rootfs.layer()?;
    let layer_digest = digest(&layer);
    let json = |v: &Value| {
        serde_json::to_vec(v).map_err(|e| Error::Invalid {
            path: reference.to_string(),
            reason: e.to_string(),
        })
    };
    let config_doc = json(&config_json(config, &layer_digest))?;
    let config_digest = digest(&config_doc);
    let manifest = json(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": { "mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config_doc.len() },
        "layers": [{ "mediaType": MEDIA_LAYER, "digest": layer_digest, "size": layer.len() }],
    }))?;
    let manifest_digest = digest(&manifest);
    let index = json(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [{
            "mediaType": MEDIA_MANIFEST,
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": { "architecture": architecture(), "os": "linux" },
            "annotations": { CONTAINERD_NAME: reference, REF_NAME: tag },
        }],
    }))?;

    let mut files: Vec<(String, &[u8])> = vec![
        ("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#),
        ("index.json".into(), &index),
    ];
    for (d, data) in [
        (&manifest_digest, manifest.as_slice()),
        (&config_digest, config_doc.as_slice()),
        (&layer_digest, layer.as_slice()),
    ] {
        files.push((format!("blobs/sha256/{}", &d["sha256:".len()..]), data));
    }
    let mut tar = tar::Builder::new(Vec::new());
    for dir in ["blobs/", "blobs/sha256/"] {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        tar.append_data(&mut h, dir, std::io::empty())
            .map_err(Error::io("writing", out))?;
    }
    for (name, data) in files {
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        tar.append_data(&mut h, name, data)
            .map_err(Error::io("writing", out))?;
    }
    let bytes = tar.into_inner().map_err(Error::io("writing", out))?;
    if let Some(parent) = out.parent() {
        fs::create_dir_all(parent).map_err(Error::io("creating", parent))?;
    }
    fs::write(out, &bytes).map_err(Error::io("writing", out))?;
    Ok(Written {
        manifest: manifest_digest,
        config: config_digest,
        bytes: bytes.len() as u64,
    })
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn sample() -> (Config, Rootfs) {
        let mut fs = Rootfs::new();
        fs.file("/usr/local/bin/hello", 0o755, b"\x7fELF".to_vec())
            .expect("to_vec");
        let config = Config {
            user: "65532:65532".into(),
            entrypoint: vec!["/usr/local/bin/hello".into()],
            cmd: vec!["run".into()],
            env: vec!["PATH=/usr/local/bin".into()],
            exposed_ports: vec![8443],
        };
        (config, fs)
    }

    fn read_archive(path: &Path) -> BTreeMap<String, Vec<u8>> {
        let bytes = fs::read(path).expect("read");
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut files = BTreeMap::new();
        for e in archive.entries().expect("entries") {
            let mut e = e.expect("value");
            let name = e.path().expect("path").display().to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).expect("read_to_end");
            files.insert(name, data);
        }
        files
    }

    #[test]
    fn an_archive_is_a_valid_layout_whose_digests_match() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("img.tar");
        let (config, fs) = sample();
        let written =
            write_archive(&out, "example.test/hello:1.2.3", &config, &fs).expect("write_archive");
        let files = read_archive(&out);
        assert_eq!(files["oci-layout"], br#"{"imageLayoutVersion":"1.0.0"}"#);
        let blob = |d: &str| &files[&format!("blobs/sha256/{}", &d[7..])];
        for (name, data) in &files {
            if let Some(hex) = name.strip_prefix("blobs/sha256/")
                && !hex.is_empty()
            {
                assert_eq!(digest(data), format!("sha256:{hex}"), "{name}");
            }
        }
        let index: Value = serde_json::from_slice(&files["index.json"]).expect("from_slice");
        let m = &index["manifests"][0];
        assert_eq!(m["digest"], written.manifest.as_str());
        assert_eq!(
            m["annotations"][CONTAINERD_NAME],
            "example.test/hello:1.2.3"
        );
        assert_eq!(m["annotations"][REF_NAME], "1.2.3");
        let manifest: Value = serde_json::from_slice(blob(&written.manifest)).expect("blob");
        assert_eq!(manifest["config"]["digest"], written.config.as_str());
        let layer_digest = manifest["layers"][0]["digest"].as_str().expect("as_str");
        let cfg: Value = serde_json::from_slice(blob(&written.config)).expect("blob");
        assert_eq!(cfg["rootfs"]["diff_ids"][0], layer_digest);
        assert_eq!(cfg["config"]["User"], "65532:65532");
        assert_eq!(cfg["config"]["Entrypoint"][0], "/usr/local/bin/hello");
        assert_eq!(cfg["config"]["Cmd"][0], "run");
        assert!(cfg["config"]["ExposedPorts"]["8443/tcp"].is_object());
        assert_eq!(blob(layer_digest), &fs.layer().expect("layer"));
    }

    #[test]
    fn the_same_input_gives_the_same_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (config, fs) = sample();
        let a = dir.path().join("a.tar");
        let b = dir.path().join("b.tar");
        let wa = write_archive(&a, "x/y:1", &config, &fs).expect("write_archive");
        let wb = write_archive(&b, "x/y:1", &config, &fs).expect("write_archive");
        assert_eq!(wa, wb);
        assert_eq!(fs::read(a).expect("read"), fs::read(b).expect("read"));
    }

    #[test]
    fn a_reference_needs_a_tag() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (config, fs) = sample();
        for bad in ["x/y", "localhost:5000/y", ":1"] {
            let err =
                write_archive(&dir.path().join("z.tar"), bad, &config, &fs).expect_err("refused");
            assert!(err.to_string().contains("tag"), "{bad}: {err}");
        }
    }
}
