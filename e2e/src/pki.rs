//! The cluster's throwaway PKI, made in-process with rcgen (ECDSA P-256).
//!
//! Three CAs, as a real cluster has them: the cluster CA (apiserver serving
//! cert and every client cert kube-apiserver's `--client-ca-file` accepts),
//! the front-proxy CA (only the aggregation layer's `front-proxy-client`,
//! trusted through `--requestheader-client-ca-file`), and nodepulse's own CA
//! for the aggregator replicas' serving certificate (what the agents verify).

use std::{
    fs::OpenOptions,
    io::Write,
    net::Ipv4Addr,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A certificate and its private key, as PEM files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a leaf certificate is for.
#[derive(Clone, Copy, Debug)]
pub enum Usage {
    Server,
    Client,
}

/// A CA that can issue more certificates while the cluster runs (e.g. users).
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM), for kube-controller-manager's signer flags.
    pub key: PathBuf,
}

impl Ca {
    fn new(dir: &Path, file: &str, common_name: &str) -> Result<Self> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let key_pem = key.serialize_pem();
        let issuer = CertifiedIssuer::self_signed(params, key)
            .with_context(|| format!("self-signing {common_name}"))?;
        let cert = dir.join(format!("{file}.crt"));
        let key = dir.join(format!("{file}.key"));
        write(&cert, &issuer.pem(), 0o644)?;
        write(&key, &key_pem, 0o600)?;
        Ok(Self { issuer, cert, key })
    }

    /// Issues `<dir>/<file>.{crt,key}` for `common_name` (and organization, which
    /// Kubernetes reads as the group), with `sans` (IPs or DNS names).
    pub fn issue(
        &self,
        dir: &Path,
        file: &str,
        common_name: &str,
        organization: Option<&str>,
        sans: &[String],
        usage: Usage,
    ) -> Result<CertFiles> {
        let (cert, key) = self.leaf(common_name, organization, sans, usage)?;
        let files = CertFiles {
            cert: dir.join(format!("{file}.crt")),
            key: dir.join(format!("{file}.key")),
        };
        write(&files.cert, &cert.pem(), 0o644)?;
        write(&files.key, &key.serialize_pem(), 0o600)?;
        Ok(files)
    }

    /// A serving certificate for `sans`, in memory (for in-process servers):
    /// the certificate and its PKCS#8 key, DER.
    pub fn issue_serving_der(
        &self,
        common_name: &str,
        sans: &[String],
    ) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
        let (cert, key) = self.leaf(common_name, None, sans, Usage::Server)?;
        Ok((
            cert.der().clone(),
            PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        ))
    }

    fn leaf(
        &self,
        common_name: &str,
        organization: Option<&str>,
        sans: &[String],
        usage: Usage,
    ) -> Result<(rcgen::Certificate, KeyPair)> {
        let mut params =
            CertificateParams::new(sans.to_vec()).with_context(|| format!("SANs {sans:?}"))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        if let Some(o) = organization {
            params.distinguished_name.push(DnType::OrganizationName, o);
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![match usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("signing {common_name}"))?;
        Ok((cert, key))
    }
}

/// Every credential the cluster's processes start with.
pub struct Pki {
    pub dir: PathBuf,
    pub cluster_ca: Ca,
    pub front_proxy_ca: Ca,
    pub nodepulse_ca: Ca,
    /// kube-apiserver's serving certificate.
    pub apiserver: CertFiles,
    /// What kube-apiserver presents when it proxies to an aggregated API.
    pub front_proxy_client: CertFiles,
    /// kube-controller-manager's client certificate.
    pub controller_manager: CertFiles,
    /// Serving (and ingest) certificate of every aggregator replica.
    pub aggregator_serving: CertFiles,
    /// Service-account token signing key (PKCS#8 PEM) and its public key.
    pub service_account_key: PathBuf,
    pub service_account_pub: PathBuf,
}

/// The front-proxy client's CN, which `--requestheader-allowed-names` admits.
pub const FRONT_PROXY_CLIENT: &str = "front-proxy-client";

impl Pki {
    /// Generates everything into `dir`. `apiserver_sans` name kube-apiserver,
    /// `aggregator_sans` the aggregator replicas.
    pub fn generate(
        dir: &Path,
        apiserver_sans: &[String],
        aggregator_sans: &[String],
    ) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let cluster_ca = Ca::new(dir, "ca", "nodepulse-e2e-ca")?;
        let front_proxy_ca = Ca::new(dir, "front-proxy-ca", "nodepulse-e2e-front-proxy-ca")?;
        let nodepulse_ca = Ca::new(dir, "nodepulse-ca", "nodepulse-e2e-aggregator-ca")?;
        let apiserver = cluster_ca.issue(
            dir,
            "apiserver",
            "kube-apiserver",
            None,
            apiserver_sans,
            Usage::Server,
        )?;
        let front_proxy_client = front_proxy_ca.issue(
            dir,
            "front-proxy-client",
            FRONT_PROXY_CLIENT,
            None,
            &[],
            Usage::Client,
        )?;
        let controller_manager = cluster_ca.issue(
            dir,
            "kube-controller-manager",
            "system:kube-controller-manager",
            None,
            &[],
            Usage::Client,
        )?;
        let aggregator_serving = nodepulse_ca.issue(
            dir,
            "nodepulse-serving",
            "nodepulse.kube-system.svc",
            None,
            aggregator_sans,
            Usage::Server,
        )?;
        let sa = KeyPair::generate()?;
        let service_account_key = dir.join("sa.key");
        let service_account_pub = dir.join("sa.pub");
        write(&service_account_key, &sa.serialize_pem(), 0o600)?;
        write(&service_account_pub, &sa.public_key_pem(), 0o644)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            cluster_ca,
            front_proxy_ca,
            nodepulse_ca,
            apiserver,
            front_proxy_client,
            controller_manager,
            aggregator_serving,
            service_account_key,
            service_account_pub,
        })
    }

    /// A client certificate from the cluster CA: user `common_name`, group
    /// `organization` (rcgen writes one O, so at most one group).
    pub fn client(
        &self,
        file: &str,
        common_name: &str,
        organization: Option<&str>,
    ) -> Result<CertFiles> {
        self.cluster_ca.issue(
            &self.dir,
            file,
            common_name,
            organization,
            &[],
            Usage::Client,
        )
    }
}

/// The SANs of kube-apiserver's serving certificate.
pub fn apiserver_sans(api_ip: Ipv4Addr, service_ip: Ipv4Addr) -> Vec<String> {
    let mut sans: Vec<String> = [
        "127.0.0.1",
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    .map(String::from)
    .to_vec();
    sans.push(api_ip.to_string());
    sans.push(service_ip.to_string());
    sans
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_every_file_as_pem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::generate(
            dir.path(),
            &apiserver_sans(Ipv4Addr::new(10, 203, 0, 1), Ipv4Addr::new(10, 203, 128, 1)),
            &["10.203.0.10".into(), "nodepulse.kube-system.svc".into()],
        )
        .expect("pki");
        let user = pki
            .client("user", "someone", Some("system:masters"))
            .expect("client cert");
        let read = |p: &Path| std::fs::read_to_string(p).expect("read");
        for cert in [
            &pki.cluster_ca.cert,
            &pki.front_proxy_ca.cert,
            &pki.nodepulse_ca.cert,
            &pki.apiserver.cert,
            &pki.front_proxy_client.cert,
            &pki.controller_manager.cert,
            &pki.aggregator_serving.cert,
            &user.cert,
        ] {
            assert!(read(cert).starts_with("-----BEGIN CERTIFICATE-----"));
        }
        for key in [&pki.cluster_ca.key, &pki.apiserver.key, &user.key] {
            assert!(read(key).starts_with("-----BEGIN PRIVATE KEY-----"));
        }
        assert!(read(&pki.service_account_key).starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(read(&pki.service_account_pub).starts_with("-----BEGIN PUBLIC KEY-----"));
    }
}
