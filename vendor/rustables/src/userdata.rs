//! libnftnl-compatible userdata ("udata") TLVs, stored by the kernel as an opaque blob in
//! `NFTA_{TABLE,CHAIN,RULE,SET,SET_ELEM}_USERDATA` and interpreted only by userspace. `nft list`
//! reads them to print `comment "..."` and to pick key/data byte orders.
//!
//! Encoding (libnftnl `nftnl_udata_put`): one byte type, one byte length, then `length` bytes of
//! value; comments are NUL-terminated strings.

/// `NFTNL_UDATA_TABLE_COMMENT`
pub const NFTNL_UDATA_TABLE_COMMENT: u8 = 0;
/// `NFTNL_UDATA_CHAIN_COMMENT`
pub const NFTNL_UDATA_CHAIN_COMMENT: u8 = 0;
/// `NFTNL_UDATA_RULE_COMMENT`
pub const NFTNL_UDATA_RULE_COMMENT: u8 = 0;
/// `NFTNL_UDATA_SET_KEYBYTEORDER` (u32 in host order: 1 = host endian, 2 = big endian)
pub const NFTNL_UDATA_SET_KEYBYTEORDER: u8 = 0;
/// `NFTNL_UDATA_SET_DATABYTEORDER` (u32 in host order: 1 = host endian, 2 = big endian)
pub const NFTNL_UDATA_SET_DATABYTEORDER: u8 = 1;
/// `NFTNL_UDATA_SET_MERGE_ELEMENTS`
pub const NFTNL_UDATA_SET_MERGE_ELEMENTS: u8 = 2;
/// `NFTNL_UDATA_SET_COMMENT`
pub const NFTNL_UDATA_SET_COMMENT: u8 = 7;
/// `NFTNL_UDATA_SET_ELEM_COMMENT`
pub const NFTNL_UDATA_SET_ELEM_COMMENT: u8 = 0;

/// nft's `BYTEORDER_HOST_ENDIAN`, the value of a `*BYTEORDER` set udata attribute.
pub const BYTEORDER_HOST_ENDIAN: u32 = 1;
/// nft's `BYTEORDER_BIG_ENDIAN`.
pub const BYTEORDER_BIG_ENDIAN: u32 = 2;

/// Longest comment nft accepts when parsing (`NFTNL_UDATA_COMMENT_MAXLEN`); longer comments are
/// truncated by [`UserData::with_comment`] so that `nft list` output parses back.
pub const COMMENT_MAXLEN: usize = 128;

/// A builder/reader for libnftnl userdata TLVs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserData(Vec<u8>);

impl UserData {
    pub fn new() -> Self {
        Self::default()
    }

    /// Wraps existing userdata bytes (e.g. read back from the kernel).
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Self {
        UserData(bytes.into())
    }

    /// Appends one TLV. Values longer than 255 bytes are truncated (the length is one byte).
    pub fn with_attr(mut self, attr_type: u8, value: &[u8]) -> Self {
        let value = &value[..value.len().min(u8::MAX as usize)];
        self.0.push(attr_type);
        self.0.push(value.len() as u8);
        self.0.extend_from_slice(value);
        self
    }

    /// Appends a u32 TLV in host byte order (libnftnl `nftnl_udata_put_u32`).
    pub fn with_u32(self, attr_type: u8, value: u32) -> Self {
        self.with_attr(attr_type, &value.to_ne_bytes())
    }

    /// Appends a NUL-terminated comment TLV, truncated to [`COMMENT_MAXLEN`] bytes (on a char
    /// boundary).
    pub fn with_comment(self, attr_type: u8, comment: &str) -> Self {
        let mut end = comment.len().min(COMMENT_MAXLEN);
        while !comment.is_char_boundary(end) {
            end -= 1;
        }
        let mut v = comment.as_bytes()[..end].to_vec();
        v.push(0);
        self.with_attr(attr_type, &v)
    }

    /// Iterates over the (type, value) TLVs; stops at the first malformed one.
    pub fn attrs(&self) -> impl Iterator<Item = (u8, &[u8])> {
        let mut rest = self.0.as_slice();
        std::iter::from_fn(move || {
            if rest.len() < 2 || rest.len() < 2 + rest[1] as usize {
                return None;
            }
            let (t, l) = (rest[0], rest[1] as usize);
            let v = &rest[2..2 + l];
            rest = &rest[2 + l..];
            Some((t, v))
        })
    }

    /// The value of the first TLV of this type.
    pub fn get(&self, attr_type: u8) -> Option<&[u8]> {
        self.attrs().find(|(t, _)| *t == attr_type).map(|(_, v)| v)
    }

    /// The comment stored under `attr_type` (NUL terminator stripped).
    pub fn comment(&self, attr_type: u8) -> Option<String> {
        let v = self.get(attr_type)?;
        let v = v.strip_suffix(&[0]).unwrap_or(v);
        Some(String::from_utf8_lossy(v).into_owned())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

impl From<UserData> for Vec<u8> {
    fn from(u: UserData) -> Vec<u8> {
        u.0
    }
}
