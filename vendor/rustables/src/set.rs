use rustables_macros::nfnetlink_struct;

use crate::ProtocolFamily;
use crate::data_type::{DataType, NftType};
use crate::error::{BuilderError, QueryError};
use crate::expr::{Verdict, VerdictKind};
use crate::nlmsg::{NfNetlinkAttribute, NfNetlinkObject};
use crate::parser_impls::{NfNetlinkData, NfNetlinkList};
use crate::sys::{
    NFT_DATA_VERDICT, NFT_MSG_DELSET, NFT_MSG_DELSETELEM, NFT_MSG_GETSET, NFT_MSG_GETSETELEM,
    NFT_MSG_NEWSET, NFT_MSG_NEWSETELEM, NFT_SET_CONCAT, NFT_SET_MAP, NFT_SET_TIMEOUT,
    NFTA_SET_DATA_LEN, NFTA_SET_DATA_TYPE, NFTA_SET_DESC, NFTA_SET_DESC_CONCAT, NFTA_SET_DESC_SIZE,
    NFTA_SET_ELEM_DATA, NFTA_SET_ELEM_EXPIRATION, NFTA_SET_ELEM_FLAGS, NFTA_SET_ELEM_KEY,
    NFTA_SET_ELEM_KEY_END, NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_LIST_SET,
    NFTA_SET_ELEM_LIST_SET_ID, NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_TIMEOUT,
    NFTA_SET_ELEM_USERDATA, NFTA_SET_FIELD_LEN, NFTA_SET_FLAGS, NFTA_SET_GC_INTERVAL,
    NFTA_SET_HANDLE, NFTA_SET_ID, NFTA_SET_KEY_LEN, NFTA_SET_KEY_TYPE, NFTA_SET_NAME,
    NFTA_SET_POLICY, NFTA_SET_TABLE, NFTA_SET_TIMEOUT, NFTA_SET_USERDATA,
};
use crate::table::Table;
use crate::userdata::{
    BYTEORDER_HOST_ENDIAN, NFTNL_UDATA_SET_COMMENT, NFTNL_UDATA_SET_ELEM_COMMENT,
    NFTNL_UDATA_SET_KEYBYTEORDER, UserData,
};
use std::fmt::Debug;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT_SET_ID: AtomicU32 = AtomicU32::new(1);

/// A process-wide unique `NFTA_SET_ID`. The kernel requires a set id in every NEWSET message;
/// within one batch, lookups/elements/dynsets can then find a set added in that same batch
/// (anonymous `__set%d`/`__map%d` sets can only be found that way).
pub fn next_set_id() -> u32 {
    NEXT_SET_ID.fetch_add(1, Ordering::Relaxed)
}

/// A named or anonymous set, or a map when `NFT_SET_MAP` is in `flags` and a data type is set.
///
/// Build with [`Set::new`] (table, family and a unique id filled in), then e.g.
/// `.with_key(&[NftType::IPV4_ADDR, NftType::INET_PROTO, NftType::INET_SERVICE]).with_verdict_data()`.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
#[nfnetlink_struct(derive_deserialize = false)]
pub struct Set {
    pub family: ProtocolFamily,
    #[field(NFTA_SET_TABLE)]
    pub table: String,
    #[field(NFTA_SET_NAME)]
    pub name: String,
    /// `NFT_SET_*` flags (`NFT_SET_MAP`, `NFT_SET_TIMEOUT`, `NFT_SET_EVAL` = nft's `dynamic`,
    /// `NFT_SET_INTERVAL`, `NFT_SET_CONCAT`, `NFT_SET_ANONYMOUS`, `NFT_SET_CONSTANT`).
    #[field(NFTA_SET_FLAGS)]
    pub flags: u32,
    #[field(NFTA_SET_KEY_TYPE)]
    pub key_type: u32,
    #[field(NFTA_SET_KEY_LEN)]
    pub key_len: u32,
    #[field(NFTA_SET_ID)]
    pub id: u32,
    #[field(NFTA_SET_USERDATA)]
    pub userdata: Vec<u8>,
    /// Default element timeout, milliseconds (needs `NFT_SET_TIMEOUT`).
    #[field(NFTA_SET_TIMEOUT)]
    pub timeout: u64,
    /// `NFT_DATA_VERDICT` for a verdict map, else an nft type id (possibly a concatenation).
    #[field(NFTA_SET_DATA_TYPE)]
    pub data_type: u32,
    #[field(NFTA_SET_DATA_LEN)]
    pub data_len: u32,
    /// `NFT_SET_POL_PERFORMANCE` or `NFT_SET_POL_MEMORY`.
    #[field(NFTA_SET_POLICY)]
    pub policy: u32,
    #[field(NFTA_SET_DESC)]
    pub desc: SetDesc,
    /// Garbage collection interval, milliseconds.
    #[field(NFTA_SET_GC_INTERVAL)]
    pub gc_interval: u32,
    /// Kernel handle (read back when listing).
    #[field(NFTA_SET_HANDLE)]
    pub handle: u64,
}

/// `NFTA_SET_DESC`: expected number of elements, and per-field lengths of a concatenated key
/// (only needed for interval concatenations, together with `NFT_SET_CONCAT`).
#[derive(Default, Debug, Clone, PartialEq, Eq)]
#[nfnetlink_struct(nested = true)]
pub struct SetDesc {
    // not "size": a get_size() getter would shadow NfNetlinkAttribute::get_size
    #[field(NFTA_SET_DESC_SIZE, name_in_functions = "elem_count")]
    pub elem_count: u32,
    #[field(NFTA_SET_DESC_CONCAT)]
    pub concat: NfNetlinkList<SetField>,
}

/// One field of `NFTA_SET_DESC_CONCAT`.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
#[nfnetlink_struct(nested = true)]
pub struct SetField {
    #[field(NFTA_SET_FIELD_LEN)]
    pub len: u32,
}

impl Set {
    /// A set in `table` (name and family taken from it) with a fresh unique `NFTA_SET_ID`.
    /// For an anonymous set, use the name `__set%d` / `__map%d` and the flags
    /// `NFT_SET_ANONYMOUS | NFT_SET_CONSTANT`; the kernel picks the number.
    pub fn new(name: impl Into<String>, table: &Table) -> Result<Self, BuilderError> {
        let table_name = table.get_name().ok_or(BuilderError::MissingTableName)?;
        Ok(Set {
            family: table.get_family(),
            ..Set::default()
        }
        .with_table(table_name)
        .with_name(name.into())
        .with_id(next_set_id()))
    }

    /// ORs `flags` into the set flags.
    pub fn with_added_flags(mut self, flags: u32) -> Self {
        self.flags = Some(self.flags.unwrap_or(0) | flags);
        self
    }

    /// Key type and length of a (possibly concatenated) key, e.g.
    /// `&[NftType::IPV4_ADDR, NftType::INET_PROTO, NftType::INET_SERVICE]`
    /// (type `7 << 12 | 12 << 6 | 13`, length 12).
    pub fn with_key(self, fields: &[NftType]) -> Self {
        self.with_key_type(NftType::concat_type(fields))
            .with_key_len(NftType::concat_len(fields))
    }

    /// Makes this a verdict map (`type ... : verdict`): `NFT_SET_MAP`, data type
    /// `NFT_DATA_VERDICT`.
    pub fn with_verdict_data(self) -> Self {
        self.with_added_flags(NFT_SET_MAP)
            .with_data_type(NFT_DATA_VERDICT)
    }

    /// Makes this a map with (possibly concatenated) data, e.g.
    /// `&[NftType::IPV4_ADDR, NftType::INET_SERVICE]` for `: ipv4_addr . inet_service`.
    pub fn with_map_data(self, fields: &[NftType]) -> Self {
        self.with_added_flags(NFT_SET_MAP)
            .with_data_type(NftType::concat_type(fields))
            .with_data_len(NftType::concat_len(fields))
    }

    /// Default element timeout in milliseconds; also sets `NFT_SET_TIMEOUT`.
    pub fn with_default_timeout(self, timeout_ms: u64) -> Self {
        self.with_added_flags(NFT_SET_TIMEOUT)
            .with_timeout(timeout_ms)
    }

    /// Field lengths of a concatenated key in `NFTA_SET_DESC_CONCAT`, plus `NFT_SET_CONCAT`.
    /// Only needed for interval (`NFT_SET_INTERVAL`) concatenations.
    pub fn with_concat_desc(mut self, fields: &[NftType]) -> Self {
        let mut desc = self.desc.take().unwrap_or_default();
        let mut list = NfNetlinkList::<SetField>::default();
        for f in fields {
            list.add_value(SetField::default().with_len(f.len));
        }
        desc.set_concat(list);
        self.desc = Some(desc);
        self.with_added_flags(NFT_SET_CONCAT)
    }

    /// Appends a libnftnl userdata TLV (see [`crate::userdata`]).
    pub fn with_userdata_attr(mut self, attr_type: u8, value: &[u8]) -> Self {
        let udata = UserData::from_bytes(self.userdata.take().unwrap_or_default())
            .with_attr(attr_type, value);
        self.userdata = Some(udata.into_bytes());
        self
    }

    /// `NFTNL_UDATA_SET_COMMENT`, so that `nft list` shows `comment "..."` (nft >= 1.0.?; older
    /// versions ignore it). Truncated to 128 bytes.
    pub fn with_comment(mut self, comment: &str) -> Self {
        let udata = UserData::from_bytes(self.userdata.take().unwrap_or_default())
            .with_comment(NFTNL_UDATA_SET_COMMENT, comment);
        self.userdata = Some(udata.into_bytes());
        self
    }

    /// The comment stored in the set userdata, if any.
    pub fn get_comment(&self) -> Option<String> {
        UserData::from_bytes(self.userdata.clone()?).comment(NFTNL_UDATA_SET_COMMENT)
    }

    /// Display hint for `nft list`: the key is a host-endian integer (e.g. a `numgen` result),
    /// so nft prints `1` rather than `16777216`.
    pub fn with_host_endian_key(self) -> Self {
        self.with_userdata_attr(
            NFTNL_UDATA_SET_KEYBYTEORDER,
            &BYTEORDER_HOST_ENDIAN.to_ne_bytes(),
        )
    }
}

impl NfNetlinkObject for Set {
    const MSG_TYPE_ADD: u32 = NFT_MSG_NEWSET;
    const MSG_TYPE_DEL: u32 = NFT_MSG_DELSET;

    fn get_family(&self) -> ProtocolFamily {
        self.family
    }

    fn set_family(&mut self, family: ProtocolFamily) {
        self.family = family;
    }
}

pub struct SetBuilder<K: DataType> {
    inner: Set,
    list: SetElementList,
    _phantom: PhantomData<K>,
}

impl<K: DataType> SetBuilder<K> {
    pub fn new(name: impl Into<String>, table: &Table) -> Result<Self, BuilderError> {
        let table_name = table.get_name().ok_or(BuilderError::MissingTableName)?;
        let set_name = name.into();
        // the kernel needs the table's family and an NFTA_SET_ID
        let set = Set::new(&set_name, table)?
            .with_key_type(K::TYPE)
            .with_key_len(K::LEN);

        Ok(SetBuilder {
            list: SetElementList {
                table: Some(table_name.clone()),
                family: table.get_family(),
                set: Some(set_name),
                elements: Some(SetElementListElements::default()),
                set_id: set.id,
            },
            inner: set,
            _phantom: PhantomData,
        })
    }

    pub fn add(&mut self, key: &K) {
        self.list
            .elements
            .as_mut()
            .unwrap()
            .add_value(SetElement::new(key.data()));
    }

    pub fn finish(self) -> (Set, SetElementList) {
        (self.inner, self.list)
    }
}

/// A message adding (`MsgType::Add`) or deleting (`MsgType::Del`) elements of a set. Sent with
/// `MsgType::Del` and no elements, it flushes the set.
///
/// One message must stay below 64 KiB (`nla_len` is a u16): use [`split_set_elements`] for
/// many elements; all the messages can go in the same (atomic) batch.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
#[nfnetlink_struct(nested = true, derive_deserialize = false)]
pub struct SetElementList {
    pub family: ProtocolFamily,
    #[field(NFTA_SET_ELEM_LIST_TABLE)]
    pub table: String,
    #[field(NFTA_SET_ELEM_LIST_SET)]
    pub set: String,
    #[field(NFTA_SET_ELEM_LIST_ELEMENTS)]
    pub elements: SetElementListElements,
    /// Id of a set added in the same batch (needed for anonymous sets).
    #[field(NFTA_SET_ELEM_LIST_SET_ID)]
    pub set_id: u32,
}

impl SetElementList {
    /// An (empty) element list for `set`: table, set name, family and set id copied from it.
    pub fn new(set: &Set) -> Self {
        SetElementList {
            family: set.family,
            table: set.table.clone(),
            set: set.name.clone(),
            elements: None,
            set_id: set.id,
        }
    }

    pub fn add_element(&mut self, e: SetElement) {
        self.elements
            .get_or_insert_with(Default::default)
            .add_value(e);
    }

    pub fn with_element(mut self, e: SetElement) -> Self {
        self.add_element(e);
        self
    }

    /// The elements (empty if none).
    pub fn iter_elements(&self) -> impl Iterator<Item = &SetElement> {
        self.elements.iter().flat_map(|l| l.iter())
    }
}

impl NfNetlinkObject for SetElementList {
    const MSG_TYPE_ADD: u32 = NFT_MSG_NEWSETELEM;
    const MSG_TYPE_DEL: u32 = NFT_MSG_DELSETELEM;

    fn get_family(&self) -> ProtocolFamily {
        self.family
    }

    fn set_family(&mut self, family: ProtocolFamily) {
        self.family = family;
    }
}

/// Upper bound for the encoded elements of one [`SetElementList`] message used by
/// [`split_set_elements`]; the hard limit is 65535 bytes (`nla_len` is a u16).
pub const MAX_SET_ELEM_LIST_BYTES: usize = 60 * 1024;

/// Splits `elements` into as many [`SetElementList`] messages for `set` as needed so that each
/// stays below [`MAX_SET_ELEM_LIST_BYTES`] (about 4,000 ipv4 keys, or about 1,000
/// concat-to-verdict elements, per message). Add them all to one batch with the same `MsgType`.
/// Returns no message for no elements.
pub fn split_set_elements(
    set: &Set,
    elements: impl IntoIterator<Item = SetElement>,
) -> Vec<SetElementList> {
    let mut out = Vec::new();
    let mut cur = SetElementList::new(set);
    let mut cur_bytes = 0;
    for e in elements {
        // each element is wrapped in an NFTA_LIST_ELEM attribute header
        let sz = 4 + crate::nlmsg::pad_netlink_object_with_variable_size(e.get_size());
        if cur_bytes > 0 && cur_bytes + sz > MAX_SET_ELEM_LIST_BYTES {
            out.push(std::mem::replace(&mut cur, SetElementList::new(set)));
            cur_bytes = 0;
        }
        cur.add_element(e);
        cur_bytes += sz;
    }
    if cur_bytes > 0 {
        out.push(cur);
    }
    out
}

/// One element of a set or map.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
#[nfnetlink_struct(nested = true)]
pub struct SetElement {
    /// The key bytes (for a concatenation, every field padded to 4 bytes; see
    /// [`crate::data_type::concat_bytes`]).
    #[field(NFTA_SET_ELEM_KEY)]
    pub key: NfNetlinkData,
    /// Map data: a verdict (verdict maps) or a value.
    #[field(NFTA_SET_ELEM_DATA)]
    pub data: NfNetlinkData,
    /// `NFT_SET_ELEM_INTERVAL_END`, `NFT_SET_ELEM_CATCHALL`.
    #[field(NFTA_SET_ELEM_FLAGS)]
    pub flags: u32,
    /// Milliseconds (the set needs `NFT_SET_TIMEOUT`).
    #[field(NFTA_SET_ELEM_TIMEOUT)]
    pub timeout: u64,
    /// Milliseconds left, read back from the kernel.
    #[field(NFTA_SET_ELEM_EXPIRATION)]
    pub expiration: u64,
    #[field(NFTA_SET_ELEM_USERDATA)]
    pub userdata: Vec<u8>,
    #[field(NFTA_SET_ELEM_KEY_END)]
    pub key_end: NfNetlinkData,
}

impl SetElement {
    /// An element with this key.
    pub fn new(key: impl Into<Vec<u8>>) -> Self {
        SetElement::default().with_key(NfNetlinkData::default().with_value(key.into()))
    }

    /// Verdict map data: `: goto chain`, `: jump chain`, `: drop`, `: accept`, ...
    pub fn with_verdict(self, verdict: VerdictKind) -> Self {
        self.with_data(NfNetlinkData::default().with_verdict(Verdict::from(verdict)))
    }

    /// Value map data, e.g. `concat_bytes(&[&ip.octets(), &port.to_be_bytes()])` for
    /// `: ipv4_addr . inet_service`.
    pub fn with_value(self, value: impl Into<Vec<u8>>) -> Self {
        self.with_data(NfNetlinkData::default().with_value(value.into()))
    }

    /// A NUL-terminated `NFTNL_UDATA_SET_ELEM_COMMENT`, shown by `nft list`.
    pub fn with_comment(mut self, comment: &str) -> Self {
        let udata = UserData::from_bytes(self.userdata.take().unwrap_or_default())
            .with_comment(NFTNL_UDATA_SET_ELEM_COMMENT, comment);
        self.userdata = Some(udata.into_bytes());
        self
    }

    /// The key bytes.
    pub fn key_bytes(&self) -> Option<&Vec<u8>> {
        self.key.as_ref()?.get_value()
    }

    /// The data value bytes (value maps).
    pub fn value_bytes(&self) -> Option<&Vec<u8>> {
        self.data.as_ref()?.get_value()
    }

    /// The data verdict (verdict maps).
    pub fn verdict(&self) -> Option<VerdictKind> {
        self.data.as_ref()?.get_verdict()?.kind()
    }

    /// The element comment, if any.
    pub fn get_comment(&self) -> Option<String> {
        UserData::from_bytes(self.userdata.clone()?).comment(NFTNL_UDATA_SET_ELEM_COMMENT)
    }
}

type SetElementListElements = NfNetlinkList<SetElement>;

/// Lists the sets (and maps, including anonymous ones) of `table`: same name and family.
pub fn list_sets_for_table(table: &Table) -> Result<Vec<Set>, QueryError> {
    let mut result = Vec::new();
    let mut filter =
        Set::default().with_table(table.get_name().ok_or(BuilderError::MissingTableName)?);
    filter.family = table.get_family();
    crate::query::list_objects_with_data(
        NFT_MSG_GETSET as u16,
        &|set: Set, (table, sets): &mut (&Table, &mut Vec<Set>)| {
            if set.table.as_ref() == table.get_name() && set.family == table.get_family() {
                sets.push(set);
            }
            Ok(())
        },
        Some(&filter),
        &mut (table, &mut result),
    )?;
    Ok(result)
}

/// Lists the elements of the set `set` (table, name and family taken from it), with keys,
/// data (verdicts or values), flags, timeouts and expirations.
pub fn list_set_elements(set: &Set) -> Result<Vec<SetElement>, QueryError> {
    let mut result = Vec::new();
    let filter = SetElementList {
        set_id: None,
        ..SetElementList::new(set)
    };
    crate::query::list_objects_with_data(
        NFT_MSG_GETSETELEM as u16,
        &|list: SetElementList, out: &mut Vec<SetElement>| {
            if let Some(els) = list.elements {
                out.extend(els.iter().cloned());
            }
            Ok(())
        },
        Some(&filter),
        &mut result,
    )?;
    Ok(result)
}
