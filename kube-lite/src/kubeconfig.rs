//! The part of a kubeconfig file this server needs: the current context's
//! cluster (server, CA, TLS server name) and user (client certificate and
//! key, or a token), inline (`*-data`, base64) or as files relative to the
//! kubeconfig's directory. Exec plugins, auth providers and proxies are not
//! supported; the error says so rather than failing later at the first call.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::client::{ClientSettings, Error, Result, Token};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct KubeConfig {
    #[serde(default)]
    current_context: String,
    #[serde(default)]
    contexts: Vec<Named<Context>>,
    #[serde(default)]
    clusters: Vec<Named<Cluster>>,
    #[serde(default)]
    users: Vec<Named<AuthInfo>>,
}

#[derive(Debug, Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "context", alias = "cluster", alias = "user")]
    item: Option<T>,
}

#[derive(Debug, Default, Deserialize)]
struct Context {
    #[serde(default)]
    cluster: String,
    #[serde(default)]
    user: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    #[serde(default)]
    server: String,
    certificate_authority: Option<String>,
    certificate_authority_data: Option<String>,
    tls_server_name: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
    proxy_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct AuthInfo {
    client_certificate: Option<String>,
    client_certificate_data: Option<String>,
    client_key: Option<String>,
    client_key_data: Option<String>,
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<String>,
    exec: Option<serde_yaml::Value>,
    auth_provider: Option<serde_yaml::Value>,
    username: Option<String>,
}

fn config_error(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::Config(format!("kubeconfig {}: {message}", path.display()))
}

/// Reads `path` and resolves its current context into client settings.
pub fn load(path: &Path) -> Result<ClientSettings> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    resolve(&text, base).map_err(|e| match e {
        Error::Config(message) => config_error(path, message),
        other => other,
    })
}

/// Resolves kubeconfig text; relative file references are taken from `base`.
pub fn resolve(text: &str, base: &Path) -> Result<ClientSettings> {
    let config: KubeConfig =
        serde_yaml::from_str(text).map_err(|e| Error::Config(format!("not valid YAML: {e}")))?;
    if config.current_context.is_empty() {
        return Err(Error::Config("no current-context".to_owned()));
    }
    let context = find(&config.contexts, &config.current_context, "context")?;
    let cluster = find(&config.clusters, &context.cluster, "cluster")?;
    let user = if context.user.is_empty() {
        None
    } else {
        Some(find(&config.users, &context.user, "user")?)
    };

    if cluster.insecure_skip_tls_verify {
        return Err(Error::Config(
            "insecure-skip-tls-verify is not supported; give a certificate-authority".to_owned(),
        ));
    }
    if cluster.proxy_url.is_some() {
        return Err(Error::Config("proxy-url is not supported".to_owned()));
    }
    let ca_pem = inline_or_file(
        cluster.certificate_authority_data.as_deref(),
        cluster.certificate_authority.as_deref(),
        base,
        "certificate-authority",
    )?
    .ok_or_else(|| {
        Error::Config(format!(
            "cluster {:?} has no certificate-authority(-data)",
            context.cluster
        ))
    })?;

    let mut client_identity = None;
    let mut token = None;
    if let Some(user) = user {
        if user.exec.is_some() || user.auth_provider.is_some() {
            return Err(Error::Config(format!(
                "user {:?}: exec and auth-provider credentials are not supported; use a client certificate or a token",
                context.user
            )));
        }
        if user.username.is_some() {
            return Err(Error::Config(format!(
                "user {:?}: basic authentication is not supported",
                context.user
            )));
        }
        let cert = inline_or_file(
            user.client_certificate_data.as_deref(),
            user.client_certificate.as_deref(),
            base,
            "client-certificate",
        )?;
        let key = inline_or_file(
            user.client_key_data.as_deref(),
            user.client_key.as_deref(),
            base,
            "client-key",
        )?;
        client_identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(Error::Config(format!(
                    "user {:?}: client-certificate and client-key must be given together",
                    context.user
                )));
            }
        };
        token = match (&user.token, &user.token_file) {
            (Some(t), _) if !t.is_empty() => Some(Token::Static(t.clone())),
            (_, Some(f)) if !f.is_empty() => Some(Token::File(relative(base, f))),
            _ => None,
        };
    }
    Ok(ClientSettings {
        server: cluster.server.clone(),
        ca_pem,
        tls_server_name: cluster.tls_server_name.clone().filter(|s| !s.is_empty()),
        client_identity,
        token,
        timeout: Duration::from_secs(10),
        max_body: crate::client::MAX_BODY,
    })
}

fn find<'a, T>(items: &'a [Named<T>], name: &str, what: &str) -> Result<&'a T> {
    items
        .iter()
        .find(|n| n.name == name)
        .and_then(|n| n.item.as_ref())
        .ok_or_else(|| Error::Config(format!("{what} {name:?} not found")))
}

fn relative(base: &Path, file: &str) -> PathBuf {
    let path = Path::new(file);
    if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    }
}

/// `*-data` (base64) wins over the file, as in client-go.
fn inline_or_file(
    data: Option<&str>,
    file: Option<&str>,
    base: &Path,
    what: &str,
) -> Result<Option<Vec<u8>>> {
    if let Some(data) = data.filter(|d| !d.is_empty()) {
        return decode_base64(data)
            .map(Some)
            .ok_or_else(|| Error::Config(format!("{what}-data is not valid base64")));
    }
    match file.filter(|f| !f.is_empty()) {
        None => Ok(None),
        Some(file) => {
            let path = relative(base, file);
            std::fs::read(&path)
                .map(Some)
                .map_err(|source| Error::Read { path, source })
        }
    }
}

/// Standard base64 with optional padding; whitespace ignored. Hand-written
/// because it is the only use in the crate.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    let mut padding = 0usize;
    for byte in text.bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                padding += 1;
                continue;
            }
            b' ' | b'\n' | b'\r' | b'\t' => continue,
            _ => return None,
        };
        if padding > 0 {
            return None;
        }
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be zero padding of the last sextet.
    if bits >= 6 || acc != 0 || padding > 2 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[test]
    fn base64_round_trips() {
        for input in [
            &b""[..],
            b"f",
            b"fo",
            b"foo",
            b"foob",
            b"fooba",
            b"foobar",
            &[0xff, 0, 7],
        ] {
            assert_eq!(
                decode_base64(&b64(input)).as_deref(),
                Some(input),
                "{input:?}"
            );
        }
        assert_eq!(decode_base64("Zm9v\nYmFy").as_deref(), Some(&b"foobar"[..]));
        assert_eq!(
            decode_base64("Zm8").as_deref(),
            Some(&b"fo"[..]),
            "padding optional"
        );
        assert!(decode_base64("Zm9v!").is_none());
        assert!(decode_base64("Zg=x").is_none());
        assert!(decode_base64("Zh==").is_none(), "non-zero trailing bits");
    }

    #[test]
    fn resolves_the_current_context_with_inline_data() {
        let text = format!(
            r#"
apiVersion: v1
kind: Config
current-context: kind
contexts:
- name: other
  context: {{cluster: nope, user: nope}}
- name: kind
  context:
    cluster: kind-cluster
    user: admin
clusters:
- name: kind-cluster
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority-data: {ca}
    tls-server-name: kubernetes
users:
- name: admin
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
"#,
            ca = b64(b"CA"),
            cert = b64(b"CERT"),
            key = b64(b"KEY"),
        );
        let s = resolve(&text, Path::new("/")).expect("resolves");
        assert_eq!(s.server, "https://127.0.0.1:6443");
        assert_eq!(s.ca_pem, b"CA");
        assert_eq!(s.tls_server_name.as_deref(), Some("kubernetes"));
        assert_eq!(s.client_identity, Some((b"CERT".to_vec(), b"KEY".to_vec())));
        assert_eq!(s.token, None);
    }

    #[test]
    fn files_are_relative_to_the_kubeconfig() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("ca.crt"), "CA").expect("write");
        let text = r#"
current-context: c
contexts: [{name: c, context: {cluster: k, user: u}}]
clusters: [{name: k, cluster: {server: "https://k:6443", certificate-authority: ca.crt}}]
users: [{name: u, user: {tokenFile: tok}}]
"#;
        let path = dir.path().join("config");
        std::fs::write(&path, text).expect("write");
        let s = load(&path).expect("loads");
        assert_eq!(s.ca_pem, b"CA");
        assert_eq!(s.token, Some(Token::File(dir.path().join("tok"))));
    }

    #[test]
    fn unsupported_and_broken_configs_say_why() {
        let msg = |text: &str| resolve(text, Path::new("/")).expect_err(text).to_string();
        assert!(msg("current-context: \"\"").contains("no current-context"));
        assert!(msg("current-context: x").contains("context \"x\" not found"));
        let base = r#"
current-context: c
contexts: [{name: c, context: {cluster: k, user: u}}]
clusters: [{name: k, cluster: {server: "https://k", certificate-authority-data: Q0E=}}]
"#;
        assert!(
            msg(&format!(
                "{base}users: [{{name: u, user: {{exec: {{command: aws}}}}}}]"
            ))
            .contains("exec and auth-provider credentials are not supported")
        );
        assert!(
            msg(&format!(
                "{base}users: [{{name: u, user: {{client-certificate-data: Q0E=}}}}]"
            ))
            .contains("must be given together")
        );
        assert!(msg("current-context: c\ncontexts: [{name: c, context: {cluster: k}}]\nclusters: [{name: k, cluster: {server: \"https://k\"}}]").contains("no certificate-authority"));
        assert!(msg(": : :").contains("not valid YAML"));
    }
}
