//! Reads the identity (subject and subjectAltNames) out of a client
//! certificate that rustls has already verified.
//!
//! rustls-webpki, which rustls verifies with anyway, gives us the DNS and URI
//! SANs and the raw subject; the subject's few DER layers (RFC 5280 §4.1.2.6)
//! are walked here. That costs ~100 lines instead of x509-parser and its
//! nom/asn1-rs/der-parser/time dependencies in the release binary.

use rustls::pki_types::CertificateDer;

use crate::model::ClientCert;

/// The identity of an end-entity certificate; `None` if webpki cannot parse it.
pub fn identity(der: &CertificateDer<'_>) -> Option<ClientCert> {
    let cert = webpki::EndEntityCert::try_from(der).ok()?;
    let rdns = parse_name(cert.subject()).unwrap_or_default();
    let common_name = rdns.iter().flatten().find(|(oid, _)| *oid == OID_CN).map(|(_, v)| v.clone());
    Some(ClientCert {
        subject: rfc4514(&rdns),
        common_name,
        dns_names: cert.valid_dns_names().map(str::to_string).collect(),
        uris: cert.valid_uri_names().map(str::to_string).collect(),
    })
}

/// id-at-commonName, 2.5.4.3, as DER content bytes.
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];

/// Short names RFC 4514 §3 (and common use) gives attribute types.
const SHORT_NAMES: &[(&[u8], &str)] = &[
    (&[0x55, 0x04, 0x03], "CN"),
    (&[0x55, 0x04, 0x06], "C"),
    (&[0x55, 0x04, 0x07], "L"),
    (&[0x55, 0x04, 0x08], "ST"),
    (&[0x55, 0x04, 0x09], "STREET"),
    (&[0x55, 0x04, 0x0a], "O"),
    (&[0x55, 0x04, 0x0b], "OU"),
    (&[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19], "DC"),
    (&[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01], "UID"),
];

/// One RDN: its (attribute type OID, value) pairs.
type Rdn<'a> = Vec<(&'a [u8], String)>;

/// Splits one DER TLV off `input`: (tag, content, rest).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// Parses the content of a `Name` (a SEQUENCE OF SET OF AttributeTypeAndValue).
fn parse_name(mut input: &[u8]) -> Option<Vec<Rdn<'_>>> {
    let mut rdns = Vec::new();
    while !input.is_empty() {
        let (tag, mut set, rest) = tlv(input)?;
        input = rest;
        if tag != 0x31 {
            return None;
        }
        let mut rdn = Vec::new();
        while !set.is_empty() {
            let (tag, atv, rest) = tlv(set)?;
            set = rest;
            if tag != 0x30 {
                return None;
            }
            let (oid_tag, oid, value) = tlv(atv)?;
            if oid_tag != 0x06 {
                return None;
            }
            let (value_tag, value, _) = tlv(value)?;
            rdn.push((oid, decode_string(value_tag, value)));
        }
        rdns.push(rdn);
    }
    Some(rdns)
}

/// A directory string as text: UTF8String, PrintableString, IA5String and
/// TeletexString as bytes, BMPString as UCS-2; anything else as `#hex`.
fn decode_string(tag: u8, value: &[u8]) -> String {
    match tag {
        0x0c | 0x13 | 0x16 | 0x14 => String::from_utf8_lossy(value).into_owned(),
        0x1e => {
            let units: Vec<u16> = value.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
            String::from_utf16_lossy(&units)
        }
        _ => format!("#{}", value.iter().map(|b| format!("{b:02x}")).collect::<String>()),
    }
}

/// The RFC 4514 string: RDNs last-first, `+` inside an RDN, values escaped
/// (§2.4), and every byte outside printable ASCII as `\XX` so the result is
/// always a valid header value.
fn rfc4514(rdns: &[Rdn<'_>]) -> String {
    let mut out = String::new();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, (oid, value)) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            match SHORT_NAMES.iter().find(|(o, _)| o == oid) {
                Some((_, name)) => out.push_str(name),
                None => out.push_str(&dotted_oid(oid)),
            }
            out.push('=');
            escape_value(value, &mut out);
        }
    }
    out
}

fn escape_value(value: &str, out: &mut String) {
    let bytes = value.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let special = matches!(b, b'"' | b'+' | b',' | b';' | b'<' | b'>' | b'\\')
            || (i == 0 && (b == b' ' || b == b'#'))
            || (i == bytes.len() - 1 && b == b' ');
        if special {
            out.push('\\');
            out.push(b as char);
        } else if (0x20..0x7f).contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\{b:02X}"));
        }
    }
}

/// An OID's content bytes in dotted-decimal (X.690 §8.19).
fn dotted_oid(oid: &[u8]) -> String {
    let mut arcs = Vec::new();
    let mut value: u64 = 0;
    for &b in oid {
        value = (value << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            arcs.push(value);
            value = 0;
        }
    }
    let mut parts = Vec::new();
    if let Some(&first) = arcs.first() {
        let (a, b) = if first < 80 { (first / 40, first % 40) } else { (2, first - 80) };
        parts.push(a.to_string());
        parts.push(b.to_string());
    }
    parts.extend(arcs.iter().skip(1).map(u64::to_string));
    parts.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(dn: &[(rcgen::DnType, &str)], sans: Vec<rcgen::SanType>) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (ty, value) in dn {
            params.distinguished_name.push(ty.clone(), *value);
        }
        params.subject_alt_names = sans;
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn reads_subject_cn_and_sans() {
        let der = cert(
            &[(rcgen::DnType::OrganizationName, "Acme, Inc."), (rcgen::DnType::CommonName, "alice")],
            vec![
                rcgen::SanType::DnsName("alice.example".try_into().unwrap()),
                rcgen::SanType::URI("spiffe://acme/alice".try_into().unwrap()),
            ],
        );
        let id = identity(&der).unwrap();
        assert_eq!(id.common_name.as_deref(), Some("alice"));
        assert_eq!(id.subject, "CN=alice,O=Acme\\, Inc.");
        assert_eq!(id.dns_names, vec!["alice.example"]);
        assert_eq!(id.uris, vec!["spiffe://acme/alice"]);
    }

    #[test]
    fn non_ascii_and_unknown_types_stay_header_safe() {
        let der = cert(
            &[
                (rcgen::DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]), "a@b"),
                (rcgen::DnType::CommonName, "José"),
            ],
            vec![],
        );
        let id = identity(&der).unwrap();
        assert_eq!(id.common_name.as_deref(), Some("José"));
        assert_eq!(id.subject, "CN=Jos\\C3\\A9,1.2.840.113549.1.9.1=a@b");
        assert!(http::HeaderValue::try_from(id.subject).is_ok());
        assert!(tlv(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_none());
        assert!(tlv(&[0x30, 0x05, 1]).is_none());
        assert!(parse_name(&[0x31, 0x02, 0x05, 0x00]).is_none());
    }
}
