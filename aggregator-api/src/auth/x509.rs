//! The two subject fields delegated authentication reads from a client
//! certificate: the common name (the user, or the front proxy's identity) and
//! the organizations (the groups).
//!
//! Chain verification is rustls' job (`CaBundle::verify`); this module only
//! walks the DER far enough to reach `tbsCertificate.subject`, so no X.509
//! parsing crate is needed for two strings. Semantics follow Go's
//! `pkix.Name.FillFromRDNSequence`, which the Kubernetes authenticators use:
//! the last `CN` wins, every `O` is kept in order.

/// A certificate whose subject cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The DER structure ends early or has an unexpected tag.
    #[error("malformed certificate: {0}")]
    Malformed(&'static str),
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The subject fields authentication uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    /// The last `CN` attribute, empty when there is none.
    pub common_name: String,
    /// Every `O` attribute in order.
    pub organizations: Vec<String>,
}

const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;
const TAG_INTEGER: u8 = 0x02;
const TAG_OID: u8 = 0x06;
const TAG_VERSION: u8 = 0xA0;
/// OID 2.5.4.3, commonName.
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
/// OID 2.5.4.10, organizationName.
const OID_ORGANIZATION: &[u8] = &[0x55, 0x04, 0x0A];

/// A cursor over DER elements.
struct Der<'a> {
    rest: &'a [u8],
}

impl<'a> Der<'a> {
    fn new(data: &'a [u8]) -> Self {
        Der { rest: data }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next element's tag and contents.
    fn next(&mut self) -> Result<(u8, &'a [u8])> {
        let [tag, first, rest @ ..] = self.rest else {
            return Err(Error::Malformed("truncated element header"));
        };
        let (len, rest) = if *first < 0x80 {
            (usize::from(*first), rest)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 || rest.len() < count {
                return Err(Error::Malformed("bad length"));
            }
            let len = rest[..count]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, &rest[count..])
        };
        if rest.len() < len {
            return Err(Error::Malformed("element longer than its container"));
        }
        let (contents, after) = rest.split_at(len);
        self.rest = after;
        Ok((*tag, contents))
    }

    fn expect(&mut self, tag: u8, what: &'static str) -> Result<&'a [u8]> {
        match self.next()? {
            (t, contents) if t == tag => Ok(contents),
            _ => Err(Error::Malformed(what)),
        }
    }
}

/// Reads the subject of a DER certificate.
pub fn subject(cert_der: &[u8]) -> Result<Subject> {
    let certificate = Der::new(cert_der).expect(TAG_SEQUENCE, "certificate is not a SEQUENCE")?;
    let tbs = Der::new(certificate).expect(TAG_SEQUENCE, "tbsCertificate is not a SEQUENCE")?;
    let mut fields = Der::new(tbs);
    let (mut tag, _) = fields.next()?;
    if tag == TAG_VERSION {
        (tag, _) = fields.next()?;
    }
    if tag != TAG_INTEGER {
        return Err(Error::Malformed("serialNumber is not an INTEGER"));
    }
    fields.expect(TAG_SEQUENCE, "signature algorithm")?;
    fields.expect(TAG_SEQUENCE, "issuer")?;
    fields.expect(TAG_SEQUENCE, "validity")?;
    let name = fields.expect(TAG_SEQUENCE, "subject")?;
    parse_name(name)
}

/// Reads a `Name` (the contents of its SEQUENCE).
fn parse_name(name: &[u8]) -> Result<Subject> {
    let mut out = Subject::default();
    let mut rdns = Der::new(name);
    while !rdns.is_empty() {
        let rdn = rdns.expect(TAG_SET, "RelativeDistinguishedName is not a SET")?;
        let mut attributes = Der::new(rdn);
        while !attributes.is_empty() {
            let attribute =
                attributes.expect(TAG_SEQUENCE, "AttributeTypeAndValue is not a SEQUENCE")?;
            let mut parts = Der::new(attribute);
            let oid = parts.expect(TAG_OID, "attribute type is not an OID")?;
            let (value_tag, value) = parts.next()?;
            if oid == OID_COMMON_NAME {
                if let Some(text) = decode_string(value_tag, value) {
                    out.common_name = text;
                }
            } else if oid == OID_ORGANIZATION
                && let Some(text) = decode_string(value_tag, value)
            {
                out.organizations.push(text);
            }
        }
    }
    Ok(out)
}

/// The directory string types certificates use; `None` for anything else
/// (Go skips values it cannot decode as a string too).
fn decode_string(tag: u8, value: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String, NumericString.
        0x0C | 0x13 | 0x16 | 0x12 => String::from_utf8(value.to_vec()).ok(),
        // TeletexString, read as Latin-1 like Go does.
        0x14 => Some(value.iter().map(|b| char::from(*b)).collect()),
        // BMPString: UTF-16 big endian.
        0x1E => {
            let (pairs, rest) = value.as_chunks::<2>();
            if !rest.is_empty() {
                return None;
            }
            let units: Vec<u16> = pairs.iter().map(|c| u16::from_be_bytes(*c)).collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    fn cert_with(dn: &[(DnType, &str)]) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (ty, value) in dn {
            params.distinguished_name.push(ty.clone(), *value);
        }
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn reads_common_name_and_organizations() {
        // rcgen keeps one value per type; the second O goes in under the
        // same OID as a custom type.
        let der = cert_with(&[
            (DnType::CommonName, "jane"),
            (DnType::OrganizationName, "system:masters"),
            (DnType::CustomDnType(vec![2, 5, 4, 10]), "dev"),
        ]);
        let subject = subject(&der).expect("parses");
        assert_eq!(subject.common_name, "jane");
        assert_eq!(subject.organizations, ["system:masters", "dev"]);
    }

    #[test]
    fn missing_fields_are_empty() {
        let der = cert_with(&[(DnType::CountryName, "DE")]);
        assert_eq!(subject(&der).expect("parses"), Subject::default());
    }

    #[test]
    fn last_common_name_wins_like_go() {
        let name = [
            0x31, 0x0B, 0x30, 0x09, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0C, 0x02, b'a', b'b', //
            0x31, 0x0A, 0x30, 0x08, 0x06, 0x03, 0x55, 0x04, 0x03, 0x13, 0x01, b'c',
        ];
        assert_eq!(parse_name(&name).expect("parses").common_name, "c");
    }

    #[test]
    fn bmp_and_teletex_strings_decode() {
        assert_eq!(
            decode_string(0x1E, &[0, b'h', 0, b'i']).as_deref(),
            Some("hi")
        );
        assert_eq!(decode_string(0x14, &[0xE9]).as_deref(), Some("é"));
        assert_eq!(decode_string(0x04, b"x"), None, "OCTET STRING is not text");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(subject(&[]).is_err());
        assert!(subject(&[0x30, 0x85, 1, 2, 3, 4, 5]).is_err());
        assert!(subject(&[0x30, 0x05, 0x30, 0x10]).is_err());
        let mut der = cert_with(&[(DnType::CommonName, "x")]);
        der.truncate(der.len() / 2);
        assert!(subject(&der).is_err());
    }
}
