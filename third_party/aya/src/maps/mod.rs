//! Data structures used to setup and share data with eBPF programs.
//!
//! The eBPF platform provides data structures - maps in eBPF speak - that are
//! used to setup and share data with eBPF programs. When you call
//! [`Ebpf::load_file`](crate::Ebpf::load_file) or
//! [`Ebpf::load`](crate::Ebpf::load), all the maps defined in the eBPF code get
//! initialized and can then be accessed using [`Ebpf::map`](crate::Ebpf::map),
//! [`Ebpf::map_mut`](crate::Ebpf::map_mut), or
//! [`Ebpf::take_map`](crate::Ebpf::take_map).
//!
//! # Typed maps
//!
//! The eBPF API includes many map types each supporting different operations.
//! [`Ebpf::map`](crate::Ebpf::map), [`Ebpf::map_mut`](crate::Ebpf::map_mut), and
//! [`Ebpf::take_map`](crate::Ebpf::take_map) always return the opaque
//! [`&Map`](crate::maps::Map), [`&mut Map`](crate::maps::Map), and [`Map`]
//! types respectively. Those three types can be converted to *typed maps* using
//! the [`TryFrom`] or [`TryInto`] trait. For example:
//!
//! ```no_run
//! # #[derive(Debug, thiserror::Error)]
//! # enum Error {
//! #     #[error(transparent)]
//! #     IO(#[from] std::io::Error),
//! #     #[error(transparent)]
//! #     Map(#[from] aya::maps::MapError),
//! #     #[error(transparent)]
//! #     Program(#[from] aya::programs::ProgramError),
//! #     #[error(transparent)]
//! #     Ebpf(#[from] aya::EbpfError)
//! # }
//! # let mut bpf = aya::Ebpf::load(&[])?;
//! use aya::maps::SockMap;
//! use aya::programs::SkMsg;
//!
//! let intercept_egress = SockMap::try_from(bpf.map_mut("INTERCEPT_EGRESS").unwrap())?;
//! let map_fd = intercept_egress.fd().try_clone()?;
//! let prog: &mut SkMsg = bpf.program_mut("intercept_egress_packet").unwrap().try_into()?;
//! prog.load()?;
//! prog.attach(&map_fd)?;
//!
//! # Ok::<(), Error>(())
//! ```
//!
//! # Maps and `Pod` values
//!
//! Many map operations copy data from kernel space to user space and vice
//! versa. Because of that, all map values must be plain old data and therefore
//! implement the [Pod] trait.
use std::{
    borrow::Borrow,
    ffi::CString,
    io,
    marker::PhantomData,
    num::NonZeroU32,
    ops::Deref,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::Path,
    ptr,
};

use aya_obj::{
    EbpfSectionKind, InvalidTypeBinding,
    generated::{BPF_F_NO_COMMON_LRU, BPF_F_RDONLY, BPF_F_RDONLY_PROG, BPF_F_WRONLY, bpf_map_type},
    parse_map_info,
};
use thiserror::Error;

use crate::{
    PinningType, Pod,
    pin::PinError,
    sys::{
        SyscallError, bpf_create_map, bpf_get_object, bpf_map_freeze, bpf_map_get_fd_by_id,
        bpf_map_get_next_key, bpf_map_update_elem_ptr, bpf_pin_object,
    },
    util::nr_cpus,
};

pub mod array;
pub mod bloom_filter;
pub mod cgroup_storage;
pub mod cgrp_storage;
pub mod hash_map;
mod info;
pub mod inode_storage;
pub mod lpm_trie;
pub mod of_maps;
pub mod perf;
pub mod queue;
pub mod ring_buf;
pub mod sk_storage;
pub mod sock;
pub mod stack;
pub mod stack_trace;
pub mod xdp;

pub use array::{Array, CgroupArray, PerCpuArray, ProgramArray};
pub use bloom_filter::BloomFilter;
#[expect(
    deprecated,
    reason = "re-exporting the deprecated cgroup storage map types"
)]
pub use cgroup_storage::{CgroupStorage, CgroupStorageKey, PerCpuCgroupStorage};
pub use cgrp_storage::CgrpStorage;
pub use hash_map::{HashMap, PerCpuHashMap};
pub use info::{MapInfo, MapType, loaded_maps};
pub use inode_storage::InodeStorage;
pub use lpm_trie::LpmTrie;
pub use of_maps::{ArrayOfMaps, HashOfMaps};
pub use perf::PerfEventArray;
pub use queue::Queue;
pub use ring_buf::RingBuf;
pub use sk_storage::SkStorage;
pub use sock::{ReusePortSockArray, SockHash, SockMap};
pub use stack::Stack;
pub use stack_trace::StackTraceMap;
pub use xdp::{CpuMap, DevMap, DevMapHash, XskMap};

/// Trait for constructing a typed map from [`MapData`].
///
/// This trait is sealed and cannot be implemented outside of this crate.
pub trait FromMapData: sealed::FromMapData {}

impl<T: sealed::FromMapData> FromMapData for T {}

/// Marker for map types that the kernel supports as inner maps.
///
/// This trait is sealed and cannot be implemented outside of this crate.
pub trait InnerMap: sealed::InnerMap {}

impl<T: sealed::InnerMap> InnerMap for T {}

mod sealed {
    use super::{MapData, MapError, MapFd};

    #[expect(unnameable_types, reason = "intentionally unnameable sealed trait")]
    pub trait FromMapData: Sized {
        /// Constructs a typed map from raw [`MapData`].
        fn from_map_data(map_data: MapData) -> Result<Self, MapError>;
    }

    #[expect(unnameable_types, reason = "intentionally unnameable sealed trait")]
    pub trait InnerMap {
        /// Returns the map file descriptor.
        fn fd(&self) -> &MapFd;
    }
}

#[derive(Error, Debug)]
/// Errors occurring from working with Maps
pub enum MapError {
    /// Missing inner map BTF definition for a map-of-maps.
    #[error(
        "map `{outer_name}` is a map-of-maps but has no inner map definition; \
             use #[btf_map] with a BTF-typed map-of-maps that includes an inner map type"
    )]
    MissingInnerMapDefinition {
        /// Map name
        outer_name: String,
    },

    /// Invalid map type encontered
    #[error("invalid map type {map_type}")]
    InvalidMapType {
        /// The map type
        map_type: u32,
    },

    /// Invalid map name encountered
    #[error("invalid map name `{name}`")]
    InvalidName {
        /// The map name
        name: String,
    },

    /// Failed to create map
    #[error("failed to create map `{name}`")]
    CreateError {
        /// Map name
        name: String,
        #[source]
        /// Original [`io::Error`]
        io_error: io::Error,
    },

    /// A pinned map is incompatible with the map definition being loaded.
    #[error("cannot reuse pinned map `{name}`: {property} is {actual}, expected {expected}")]
    IncompatiblePinnedMap {
        /// Map name.
        name: String,
        /// Incompatible map property.
        property: &'static str,
        /// Value required by the map definition.
        expected: u64,
        /// Value reported by the kernel for the pinned map.
        actual: u64,
    },

    /// Invalid key size
    #[error("invalid key size {size}, expected {expected}")]
    InvalidKeySize {
        /// Size encountered
        size: usize,
        /// Size expected
        expected: usize,
    },

    /// Invalid value size
    #[error("invalid value size {size}, expected {expected}")]
    InvalidValueSize {
        /// Size encountered
        size: usize,
        /// Size expected
        expected: usize,
    },

    /// Invalid value stride
    #[error("invalid value size {size}, expected a non-zero multiple of {stride}")]
    InvalidValueStride {
        /// Size encountered
        size: usize,
        /// Required stride
        stride: usize,
    },

    /// Index is out of bounds
    #[error("the index is {index} but `max_entries` is {max_entries}")]
    OutOfBounds {
        /// Index accessed
        index: u32,
        /// Map size
        max_entries: u32,
    },

    /// Key not found
    #[error("key not found")]
    KeyNotFound,

    /// Element not found
    #[error("element not found")]
    ElementNotFound,

    /// Program Not Loaded
    #[error("the program is not loaded")]
    ProgramNotLoaded,

    /// An IO error occurred
    #[error(transparent)]
    IoError(#[from] io::Error),

    /// Syscall failed
    #[error(transparent)]
    SyscallError(#[from] SyscallError),

    /// Could not pin map
    #[error("map `{name:?}` requested pinning. pinning failed")]
    PinError {
        /// The map name
        name: Option<String>,
        /// The reason for the failure
        #[source]
        error: PinError,
    },

    /// Program IDs are not supported
    #[error("program ids are not supported by the current kernel")]
    ProgIdNotSupported,

    /// Unsupported Map type
    #[error(
        "type of {name} ({map_type:?}) is unsupported; see `EbpfLoader::allow_unsupported_maps`"
    )]
    Unsupported {
        /// Map name
        name: String,
        /// The map type
        map_type: bpf_map_type,
    },

    /// Unsupported map flags
    #[error("unsupported map flags {flags:#x}: {reason}")]
    UnsupportedMapFlags {
        /// The map flags
        flags: u32,
        /// The reason
        reason: &'static str,
    },
}

impl From<InvalidTypeBinding<u32>> for MapError {
    fn from(e: InvalidTypeBinding<u32>) -> Self {
        let InvalidTypeBinding { value } = e;
        Self::InvalidMapType { map_type: value }
    }
}

/// A map file descriptor.
#[derive(Debug)]
pub struct MapFd {
    fd: crate::MockableFd,
}

impl MapFd {
    const fn from_fd(fd: crate::MockableFd) -> Self {
        Self { fd }
    }

    fn try_clone(&self) -> io::Result<Self> {
        let Self { fd } = self;
        let fd = fd.try_clone()?;
        Ok(Self { fd })
    }
}

impl AsFd for MapFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        let Self { fd } = self;
        fd.as_fd()
    }
}

/// eBPF map types.
#[derive(Debug)]
pub enum Map {
    /// An [`Array`] map.
    Array(MapData),
    /// An [`ArrayOfMaps`] map.
    ArrayOfMaps(MapData),
    /// A [`BloomFilter`] map.
    BloomFilter(MapData),
    /// A [`CgroupArray`] map.
    CgroupArray(MapData),
    /// A [`CgroupStorage`] map.
    CgroupStorage(MapData),
    /// A [`CgrpStorage`] map.
    CgrpStorage(MapData),
    /// A [`CpuMap`] map.
    CpuMap(MapData),
    /// A [`DevMap`] map.
    DevMap(MapData),
    /// A [`DevMapHash`] map.
    DevMapHash(MapData),
    /// A [`HashMap`] map.
    HashMap(MapData),
    /// A [`HashOfMaps`] map.
    HashOfMaps(MapData),
    /// An [`InodeStorage`] map.
    InodeStorage(MapData),
    /// A [`LpmTrie`] map.
    LpmTrie(MapData),
    /// A [`HashMap`] map that uses a LRU eviction policy.
    LruHashMap(MapData),
    /// A [`PerCpuArray`] map.
    PerCpuArray(MapData),
    /// A [`PerCpuCgroupStorage`] map.
    PerCpuCgroupStorage(MapData),
    /// A [`PerCpuHashMap`] map.
    PerCpuHashMap(MapData),
    /// A [`PerCpuHashMap`] map that uses a LRU eviction policy.
    PerCpuLruHashMap(MapData),
    /// A [`PerfEventArray`] map.
    PerfEventArray(MapData),
    /// A [`ProgramArray`] map.
    ProgramArray(MapData),
    /// A [`Queue`] map.
    Queue(MapData),
    /// A [`ReusePortSockArray`] map.
    ReusePortSockArray(MapData),
    /// A [`RingBuf`] map.
    RingBuf(MapData),
    /// A [`SockHash`] map
    SockHash(MapData),
    /// A [`SockMap`] map.
    SockMap(MapData),
    /// A [`SkStorage`] map.
    SkStorage(MapData),
    /// A [`Stack`] map.
    Stack(MapData),
    /// A [`StackTraceMap`] map.
    StackTraceMap(MapData),
    /// An unsupported map type.
    Unsupported(MapData),
    /// A [`XskMap`] map.
    XskMap(MapData),
}

impl Map {
    /// Returns the low level map type.
    const fn map_type(&self) -> u32 {
        match self {
            Self::Array(map) => map.obj.map_type(),
            Self::ArrayOfMaps(map) => map.obj.map_type(),
            Self::BloomFilter(map) => map.obj.map_type(),
            Self::CgroupArray(map) => map.obj.map_type(),
            Self::CgroupStorage(map) => map.obj.map_type(),
            Self::CgrpStorage(map) => map.obj.map_type(),
            Self::CpuMap(map) => map.obj.map_type(),
            Self::DevMap(map) => map.obj.map_type(),
            Self::DevMapHash(map) => map.obj.map_type(),
            Self::HashMap(map) => map.obj.map_type(),
            Self::HashOfMaps(map) => map.obj.map_type(),
            Self::InodeStorage(map) => map.obj.map_type(),
            Self::LpmTrie(map) => map.obj.map_type(),
            Self::LruHashMap(map) => map.obj.map_type(),
            Self::PerCpuArray(map) => map.obj.map_type(),
            Self::PerCpuCgroupStorage(map) => map.obj.map_type(),
            Self::PerCpuHashMap(map) => map.obj.map_type(),
            Self::PerCpuLruHashMap(map) => map.obj.map_type(),
            Self::PerfEventArray(map) => map.obj.map_type(),
            Self::ProgramArray(map) => map.obj.map_type(),
            Self::Queue(map) => map.obj.map_type(),
            Self::ReusePortSockArray(map) => map.obj.map_type(),
            Self::RingBuf(map) => map.obj.map_type(),
            Self::SockHash(map) => map.obj.map_type(),
            Self::SockMap(map) => map.obj.map_type(),
            Self::SkStorage(map) => map.obj.map_type(),
            Self::Stack(map) => map.obj.map_type(),
            Self::StackTraceMap(map) => map.obj.map_type(),
            Self::Unsupported(map) => map.obj.map_type(),
            Self::XskMap(map) => map.obj.map_type(),
        }
    }

    /// Pins the map to a BPF filesystem.
    ///
    /// When a map is pinned it will remain loaded until the corresponding file
    /// is deleted. All parent directories in the given `path` must already exist.
    pub fn pin<P: AsRef<Path>>(&self, path: P) -> Result<(), PinError> {
        match self {
            Self::Array(map) => map.pin(path),
            Self::ArrayOfMaps(map) => map.pin(path),
            Self::BloomFilter(map) => map.pin(path),
            Self::CgroupArray(map) => map.pin(path),
            Self::CgroupStorage(map) => map.pin(path),
            Self::CgrpStorage(map) => map.pin(path),
            Self::CpuMap(map) => map.pin(path),
            Self::DevMap(map) => map.pin(path),
            Self::DevMapHash(map) => map.pin(path),
            Self::HashMap(map) => map.pin(path),
            Self::HashOfMaps(map) => map.pin(path),
            Self::InodeStorage(map) => map.pin(path),
            Self::LpmTrie(map) => map.pin(path),
            Self::LruHashMap(map) => map.pin(path),
            Self::PerCpuArray(map) => map.pin(path),
            Self::PerCpuCgroupStorage(map) => map.pin(path),
            Self::PerCpuHashMap(map) => map.pin(path),
            Self::PerCpuLruHashMap(map) => map.pin(path),
            Self::PerfEventArray(map) => map.pin(path),
            Self::ProgramArray(map) => map.pin(path),
            Self::Queue(map) => map.pin(path),
            Self::RingBuf(map) => map.pin(path),
            Self::ReusePortSockArray(map) => map.pin(path),
            Self::SockHash(map) => map.pin(path),
            Self::SockMap(map) => map.pin(path),
            Self::SkStorage(map) => map.pin(path),
            Self::Stack(map) => map.pin(path),
            Self::StackTraceMap(map) => map.pin(path),
            Self::Unsupported(map) => map.pin(path),
            Self::XskMap(map) => map.pin(path),
        }
    }

    /// Constructs a [`Map`] enum variant directly from a [`MapData`] instance. This allows creating
    /// a user-space handle to a pinned BPF map.
    ///
    /// # Arguments
    ///
    /// * `map_data` - The map data obtained from [`MapData::from_pin`].
    ///
    /// # Errors
    ///
    /// Returns an error if the map type is not supported.
    pub fn from_map_data(map_data: MapData) -> Result<Self, MapError> {
        let map_type = map_data.obj.map_type();
        let map = match bpf_map_type::try_from(map_type)? {
            bpf_map_type::BPF_MAP_TYPE_HASH => Self::HashMap(map_data),
            bpf_map_type::BPF_MAP_TYPE_ARRAY => Self::Array(map_data),
            bpf_map_type::BPF_MAP_TYPE_PROG_ARRAY => Self::ProgramArray(map_data),
            bpf_map_type::BPF_MAP_TYPE_PERF_EVENT_ARRAY => Self::PerfEventArray(map_data),
            bpf_map_type::BPF_MAP_TYPE_PERCPU_HASH => Self::PerCpuHashMap(map_data),
            bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY => Self::PerCpuArray(map_data),
            bpf_map_type::BPF_MAP_TYPE_STACK_TRACE => Self::StackTraceMap(map_data),
            bpf_map_type::BPF_MAP_TYPE_LRU_HASH => Self::LruHashMap(map_data),
            bpf_map_type::BPF_MAP_TYPE_LRU_PERCPU_HASH => Self::PerCpuLruHashMap(map_data),
            bpf_map_type::BPF_MAP_TYPE_LPM_TRIE => Self::LpmTrie(map_data),
            bpf_map_type::BPF_MAP_TYPE_DEVMAP => Self::DevMap(map_data),
            bpf_map_type::BPF_MAP_TYPE_SOCKMAP => Self::SockMap(map_data),
            bpf_map_type::BPF_MAP_TYPE_CPUMAP => Self::CpuMap(map_data),
            bpf_map_type::BPF_MAP_TYPE_XSKMAP => Self::XskMap(map_data),
            bpf_map_type::BPF_MAP_TYPE_SOCKHASH => Self::SockHash(map_data),
            bpf_map_type::BPF_MAP_TYPE_QUEUE => Self::Queue(map_data),
            bpf_map_type::BPF_MAP_TYPE_STACK => Self::Stack(map_data),
            bpf_map_type::BPF_MAP_TYPE_DEVMAP_HASH => Self::DevMapHash(map_data),
            bpf_map_type::BPF_MAP_TYPE_RINGBUF => Self::RingBuf(map_data),
            bpf_map_type::BPF_MAP_TYPE_BLOOM_FILTER => Self::BloomFilter(map_data),
            bpf_map_type::BPF_MAP_TYPE_CGROUP_ARRAY => Self::CgroupArray(map_data),
            bpf_map_type::BPF_MAP_TYPE_ARRAY_OF_MAPS => Self::ArrayOfMaps(map_data),
            bpf_map_type::BPF_MAP_TYPE_HASH_OF_MAPS => Self::HashOfMaps(map_data),
            bpf_map_type::BPF_MAP_TYPE_CGROUP_STORAGE_DEPRECATED => Self::CgroupStorage(map_data),
            bpf_map_type::BPF_MAP_TYPE_REUSEPORT_SOCKARRAY => Self::ReusePortSockArray(map_data),
            bpf_map_type::BPF_MAP_TYPE_SK_STORAGE => Self::SkStorage(map_data),
            bpf_map_type::BPF_MAP_TYPE_STRUCT_OPS => Self::Unsupported(map_data),
            bpf_map_type::BPF_MAP_TYPE_INODE_STORAGE => Self::InodeStorage(map_data),
            bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE => Self::Unsupported(map_data),
            bpf_map_type::BPF_MAP_TYPE_USER_RINGBUF => Self::Unsupported(map_data),
            bpf_map_type::BPF_MAP_TYPE_CGRP_STORAGE => Self::CgrpStorage(map_data),
            bpf_map_type::BPF_MAP_TYPE_ARENA => Self::Unsupported(map_data),
            bpf_map_type::BPF_MAP_TYPE_INSN_ARRAY => Self::Unsupported(map_data),
            bpf_map_type::BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE_DEPRECATED => {
                Self::PerCpuCgroupStorage(map_data)
            }
            bpf_map_type::BPF_MAP_TYPE_UNSPEC => return Err(MapError::InvalidMapType { map_type }),
            bpf_map_type::__MAX_BPF_MAP_TYPE => return Err(MapError::InvalidMapType { map_type }),
        };
        Ok(map)
    }
}

// Implements map pinning for different map implementations
macro_rules! impl_map_pin {
    ($ty_param:tt {
        $($(#[$meta:meta])* $ty:ident),+ $(,)?
    }) => {
        $(impl_map_pin!($(#[$meta])* <$ty_param> $ty);)+
    };
    (
      $(#[$meta:meta])*
      <($($ty_param:ident),*)>
      $ty:ident
    ) => {
            $(#[$meta])*
            impl<T: Borrow<MapData>, $($ty_param: Pod),*> $ty<T, $($ty_param),*>
            {
                    /// Pins the map to a BPF filesystem.
                    ///
                    /// When a map is pinned it will remain loaded until the corresponding file
                    /// is deleted. All parent directories in the given `path` must already exist.
                    pub fn pin<P: AsRef<Path>>(self, path: P) -> Result<(), PinError> {
                        let data = self.inner.borrow();
                        data.pin(path)
                    }
            }

    };
}

impl_map_pin!(() {
    CgroupArray,
    ProgramArray,
    ReusePortSockArray,
    SockMap,
    StackTraceMap,
    CpuMap,
    DevMap,
    DevMapHash,
    XskMap,
});

impl_map_pin!((V) {
    Array,
    #[expect(deprecated, reason = "implementing pinning for the deprecated cgroup storage map types")]
    CgroupStorage,
    CgrpStorage,
    InodeStorage,
    PerCpuArray,
    #[expect(deprecated, reason = "implementing pinning for the deprecated cgroup storage map types")]
    PerCpuCgroupStorage,
    SockHash,
    BloomFilter,
    Queue,
    SkStorage,
    Stack,
});

impl_map_pin!((K, V) {
    HashMap,
    PerCpuHashMap,
    LpmTrie,
});

// Implements TryFrom<Map> for different map implementations. Different map implementations can be
// constructed from different variants of the map enum. Also, the implementation may have type
// parameters. The dispatch arm adds `Pod` bounds explicitly before forwarding to the @impl arm,
// which accepts arbitrary bounds and is also used by impl_try_from_map_of_maps.
macro_rules! impl_try_from_map {
    // At the root the type parameters are marked as a single token tree which will be pasted into
    // the invocation for each type. Note that the later patterns require that the token tree be
    // zero or more comma separated idents wrapped in parens. Note that the tt metavar is used here
    // rather than the repeated idents used later because the macro language does not allow one
    // repetition to be pasted inside another.
    ($ty_param:tt {
        $($(#[$meta:meta])* $ty:ident $(from $($variant:ident)|+)?),+ $(,)?
    }) => {
        $(impl_try_from_map!($(#[$meta])* <$ty_param> $ty $(from $($variant)|+)?);)+
    };
    // Add the "from $variant" using $ty as the default if it is missing.
    ($(#[$meta:meta])* <$ty_param:tt> $ty:ident) => {
        impl_try_from_map!($(#[$meta])* <$ty_param> $ty from $ty);
    };
    // Dispatch for each of the lifetimes, adding Pod bounds explicitly.
    (
        $(#[$meta:meta])* <($($ty_param:ident),*)> $ty:ident from $($variant:ident)|+
    ) => {
        impl_try_from_map!(@impl $(#[$meta])* <'a> ($($ty_param: Pod),*) $ty from $($variant)|+);
        impl_try_from_map!(@impl $(#[$meta])* <'a mut> ($($ty_param: Pod),*) $ty from $($variant)|+);
        impl_try_from_map!(@impl $(#[$meta])* <> ($($ty_param: Pod),*) $ty from $($variant)|+);
    };
    // An individual impl with explicit bounds. Used by both impl_try_from_map
    // and impl_try_from_map_of_maps via the @impl internal rule.
    (@impl
        $(#[$meta:meta])*
        <$($l:lifetime $($m:ident)?)?>
        ($($ty_param:ident $(: $bound:path)?),*)
        $ty:ident from $($variant:ident)|+
    ) => {
        $(#[$meta])*
        impl<$($l,)? $($ty_param $(: $bound)?),*> TryFrom<$(&$l $($m)?)? Map>
            for $ty<$(&$l $($m)?)? MapData, $($ty_param),*>
        {
            type Error = MapError;

            fn try_from(map: $(&$l $($m)?)? Map) -> Result<Self, Self::Error> {
                match map {
                    $(Map::$variant(map_data) => Self::new(map_data),)+
                    map => Err(MapError::InvalidMapType {
                        map_type: map.map_type()
                    }),
                }
            }
        }
    };
}

impl_try_from_map!(() {
    CgroupArray,
    CpuMap,
    DevMap,
    DevMapHash,
    PerfEventArray,
    ProgramArray,
    ReusePortSockArray,
    RingBuf,
    SockMap,
    StackTraceMap,
    XskMap,
});

impl_try_from_map!((V) {
    Array,
    BloomFilter,
    #[expect(deprecated, reason = "implementing TryFrom for the deprecated cgroup storage map types")]
    CgroupStorage,
    CgrpStorage,
    InodeStorage,
    PerCpuArray,
    #[expect(deprecated, reason = "implementing TryFrom for the deprecated cgroup storage map types")]
    PerCpuCgroupStorage,
    Queue,
    SockHash,
    SkStorage,
    Stack,
});

impl_try_from_map!((K, V) {
    HashMap from HashMap|LruHashMap,
    LpmTrie,
    PerCpuHashMap from PerCpuHashMap|PerCpuLruHashMap,
});

// ArrayOfMaps and HashOfMaps require V: InnerMap in TryFrom conversions.
// Delegates to the @impl arm of impl_try_from_map to avoid duplicating the
// match body.
macro_rules! impl_try_from_map_of_maps {
    ($ty:ident) => {
        impl_try_from_map_of_maps!($ty <>);
    };
    ($ty:ident <$($pre:ident : $pre_bound:path),*>) => {
        impl_try_from_map!(@impl <'a> ($($pre: $pre_bound,)* V: InnerMap) $ty from $ty);
        impl_try_from_map!(@impl <'a mut> ($($pre: $pre_bound,)* V: InnerMap) $ty from $ty);
        impl_try_from_map!(@impl <> ($($pre: $pre_bound,)* V: InnerMap) $ty from $ty);
    };
}

impl_try_from_map_of_maps!(ArrayOfMaps);
impl_try_from_map_of_maps!(HashOfMaps<K: Pod>);

// Implements `sealed::FromMapData` and `sealed::InnerMap` for a map type.
// Types with `inner: T` use the default arm; PerfEventArray and RingBuf
// pass `via map_data` to use their existing accessor method.
macro_rules! impl_from_map_data {
    ($ty_param:tt { $($ty:ident),+ $(,)? }) => {
        $(impl_from_map_data!(<$ty_param> $ty);)+
    };
    (<($($ty_param:ident),*)> $ty:ident via $accessor:ident) => {
        impl<$($ty_param: Pod),*> sealed::FromMapData for $ty<MapData, $($ty_param),*> {
            fn from_map_data(map_data: MapData) -> Result<Self, MapError> {
                Map::from_map_data(map_data)?.try_into()
            }
        }
        impl<$($ty_param: Pod),*> sealed::InnerMap for $ty<MapData, $($ty_param),*> {
            fn fd(&self) -> &MapFd {
                self.$accessor().fd()
            }
        }
    };
    (<($($ty_param:ident),*)> $ty:ident) => {
        impl<$($ty_param: Pod),*> sealed::FromMapData for $ty<MapData, $($ty_param),*> {
            fn from_map_data(map_data: MapData) -> Result<Self, MapError> {
                Map::from_map_data(map_data)?.try_into()
            }
        }
        impl<$($ty_param: Pod),*> sealed::InnerMap for $ty<MapData, $($ty_param),*> {
            fn fd(&self) -> &MapFd {
                self.inner.fd()
            }
        }
    };
}

// Map types that the kernel supports as inner maps.
// Excluded: ProgramArray (no map_meta_equal), ArrayOfMaps/HashOfMaps (multi-level nesting
// forbidden).
impl_from_map_data!(() {
    CpuMap, DevMap, DevMapHash,
    SockMap, StackTraceMap, XskMap,
});

// PerfEventArray and RingBuf use map_data() instead of inner field.
impl_from_map_data!(<()> PerfEventArray via map_data);
impl_from_map_data!(<()> RingBuf via map_data);

impl_from_map_data!((V) {
    Array, BloomFilter, CgrpStorage, InodeStorage, PerCpuArray,
    Queue, SockHash, SkStorage, Stack,
});

impl_from_map_data!((K, V) {
    HashMap, LpmTrie, PerCpuHashMap,
});

impl sealed::FromMapData for MapData {
    fn from_map_data(map_data: MapData) -> Result<Self, MapError> {
        Ok(map_data)
    }
}

impl sealed::InnerMap for MapData {
    fn fd(&self) -> &MapFd {
        self.fd()
    }
}

impl sealed::InnerMap for MapFd {
    fn fd(&self) -> &MapFd {
        self
    }
}

macro_rules! impl_creatable_map {
    (
        $ty:ident<MapData $(, $p:ident: Pod)*>,
        $map_type:expr,
        $key_size:expr,
        $value_size:expr,
        $capacity:ident,
        $name:expr
        $(, $doc:literal)?
    ) => {
        impl<$($p: Pod),*> $ty<MapData, $($p),*> {
            /// Creates a standalone map with the given capacity and `flags`.
            $(
                #[doc = ""]
                #[doc = $doc]
            )?
            pub fn create($capacity: u32, flags: u32) -> Result<Self, MapError> {
                let obj = aya_obj::Map::new_from_params(
                    $map_type as u32, $key_size, $value_size, $capacity, flags,
                );
                Self::new(MapData::create(obj, $name, None)?)
            }
        }
    };
}

impl_creatable_map!(Array<MapData, V: Pod>,
    bpf_map_type::BPF_MAP_TYPE_ARRAY, size_of::<u32>() as u32, size_of::<V>() as u32, max_entries, "standalone_array");
impl_creatable_map!(PerCpuArray<MapData, V: Pod>,
    bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY, size_of::<u32>() as u32, size_of::<V>() as u32, max_entries, "standalone_percpu_array");
impl_creatable_map!(BloomFilter<MapData, V: Pod>,
    bpf_map_type::BPF_MAP_TYPE_BLOOM_FILTER, 0, size_of::<V>() as u32, max_entries, "standalone_bloom_filter");
impl_creatable_map!(Queue<MapData, V: Pod>,
    bpf_map_type::BPF_MAP_TYPE_QUEUE, 0, size_of::<V>() as u32, max_entries, "standalone_queue");
impl_creatable_map!(Stack<MapData, V: Pod>,
    bpf_map_type::BPF_MAP_TYPE_STACK, 0, size_of::<V>() as u32, max_entries, "standalone_stack");
impl_creatable_map!(HashMap<MapData, K: Pod, V: Pod>,
    bpf_map_type::BPF_MAP_TYPE_HASH, size_of::<K>() as u32, size_of::<V>() as u32, max_entries, "standalone_hash");
impl_creatable_map!(PerCpuHashMap<MapData, K: Pod, V: Pod>,
    bpf_map_type::BPF_MAP_TYPE_PERCPU_HASH, size_of::<K>() as u32, size_of::<V>() as u32, max_entries, "standalone_percpu_hash");
impl_creatable_map!(LpmTrie<MapData, K: Pod, V: Pod>,
    bpf_map_type::BPF_MAP_TYPE_LPM_TRIE, size_of::<lpm_trie::Key<K>>() as u32, size_of::<V>() as u32, max_entries, "standalone_lpm_trie");
impl_creatable_map!(
    RingBuf<MapData>,
    bpf_map_type::BPF_MAP_TYPE_RINGBUF,
    0,
    0,
    byte_size,
    "standalone_ring_buf",
    "`byte_size` must be non-zero, a power of two, and a multiple of the system page size."
);

pub(crate) const fn check_bounds(map: &MapData, index: u32) -> Result<(), MapError> {
    let max_entries = map.obj.max_entries();
    if index >= max_entries {
        Err(MapError::OutOfBounds { index, max_entries })
    } else {
        Ok(())
    }
}

pub(crate) const fn check_kv_size<K, V>(map: &MapData) -> Result<(), MapError> {
    let size = size_of::<K>();
    let expected = map.obj.key_size() as usize;
    if size != expected {
        return Err(MapError::InvalidKeySize { size, expected });
    }
    let size = size_of::<V>();
    let expected = map.obj.value_size() as usize;
    if size != expected {
        return Err(MapError::InvalidValueSize { size, expected });
    }
    Ok(())
}

pub(crate) const fn check_v_size<V>(map: &MapData) -> Result<(), MapError> {
    let size = size_of::<V>();
    let expected = map.obj.value_size() as usize;
    if size != expected {
        return Err(MapError::InvalidValueSize { size, expected });
    }
    Ok(())
}

// Matching capacities need no normalization or access to CPU sysfs. Otherwise,
// per-CPU LRU lists require equal capacity on each possible CPU. Match the
// kernel's round-up, including its round-down fallback on u32 overflow.
// https://github.com/torvalds/linux/blob/2c85ebc57/kernel/bpf/hashtab.c#L434-L443
fn lru_max_entries(
    max_entries: u32,
    kernel_max_entries: u32,
    num_cpus: impl FnOnce() -> Result<NonZeroU32, (&'static str, io::Error)>,
) -> Result<u32, MapError> {
    if max_entries == kernel_max_entries {
        return Ok(max_entries);
    }
    let num_cpus = num_cpus().map_err(|(_, error)| MapError::IoError(error))?;
    let entries = max_entries
        .checked_add(num_cpus.get() - 1)
        .unwrap_or(max_entries);
    Ok(entries - entries % num_cpus)
}

/// A generic handle to a BPF map.
///
/// You should never need to use this unless you're implementing a new map type.
#[derive(Debug)]
pub struct MapData {
    obj: aya_obj::Map,
    fd: MapFd,
}

impl MapData {
    /// Creates a new map with the provided `name`
    pub fn create(
        obj: aya_obj::Map,
        name: &str,
        btf_fd: Option<BorrowedFd<'_>>,
    ) -> Result<Self, MapError> {
        Self::create_with_inner_map_fd(obj, name, btf_fd, None)
    }

    /// Creates a new map with the provided `name` and optional `inner_map_fd` for map-of-maps types.
    pub(crate) fn create_with_inner_map_fd(
        mut obj: aya_obj::Map,
        name: &str,
        btf_fd: Option<BorrowedFd<'_>>,
        inner_map_fd: Option<BorrowedFd<'_>>,
    ) -> Result<Self, MapError> {
        let c_name = CString::new(name)
            .map_err(|std::ffi::NulError { .. }| MapError::InvalidName { name: name.into() })?;

        // By default, the newest versions of Aya, libbpf and cilium/ebpf define `max_entries` of
        // `PerfEventArray` as `0`, with an intention to get it replaced with a correct value
        // by the loader.
        //
        // When the value is `0`, we set it to the number of CPUs.
        if obj.map_type() == bpf_map_type::BPF_MAP_TYPE_PERF_EVENT_ARRAY as u32
            && obj.max_entries() == 0
        {
            let nr_cpus = nr_cpus().map_err(|(_, error)| MapError::IoError(error))?;
            obj.set_max_entries(nr_cpus.get());
        }

        let fd = bpf_create_map(&c_name, &obj, btf_fd, inner_map_fd).map_err(|io_error| {
            MapError::CreateError {
                name: name.into(),
                io_error,
            }
        })?;
        Ok(Self {
            obj,
            fd: MapFd::from_fd(fd),
        })
    }

    pub(crate) fn create_pinned_by_name<P: AsRef<Path>>(
        path: P,
        obj: aya_obj::Map,
        name: &str,
        btf_fd: Option<BorrowedFd<'_>>,
        inner_map_obj: Option<aya_obj::Map>,
    ) -> Result<Self, MapError> {
        use std::os::unix::ffi::OsStrExt as _;

        // try to open map in case it's already pinned
        let path = path.as_ref();
        let path_string = match CString::new(path.as_os_str().as_bytes()) {
            Ok(path) => path,
            Err(error) => {
                return Err(MapError::PinError {
                    name: Some(name.into()),
                    error: PinError::InvalidPinPath {
                        path: path.to_path_buf(),
                        error,
                    },
                });
            }
        };
        if let Ok(fd) = bpf_get_object(&path_string) {
            let MapInfo(info) = MapInfo::new_from_fd(fd.as_fd())?;
            let map_type = obj.map_type();
            let mut max_entries = obj.max_entries();
            // Descriptor access modes describe the original FD, not the reopened map.
            // Older kernels retained them in map info.
            // https://github.com/torvalds/linux/blob/84df9525b/kernel/bpf/syscall.c#L162-L169
            let mut map_flags = obj.map_flags() & !(BPF_F_RDONLY | BPF_F_WRONLY);
            let kernel_map_flags = info.map_flags & !(BPF_F_RDONLY | BPF_F_WRONLY);
            match bpf_map_type::try_from(map_type)? {
                bpf_map_type::BPF_MAP_TYPE_LRU_HASH
                | bpf_map_type::BPF_MAP_TYPE_LRU_PERCPU_HASH
                    if map_type == info.type_ && map_flags & BPF_F_NO_COMMON_LRU != 0 =>
                {
                    // Only reuse needs the kernel's normalized capacity. Creation lets
                    // the kernel round it without requiring access to CPU sysfs.
                    max_entries = lru_max_entries(max_entries, info.max_entries, nr_cpus)?;
                }
                bpf_map_type::BPF_MAP_TYPE_DEVMAP | bpf_map_type::BPF_MAP_TYPE_DEVMAP_HASH => {
                    // Newer kernels add this flag when creating a device map.
                    // https://github.com/torvalds/linux/blob/e8f897f4a/kernel/bpf/devmap.c#L127
                    map_flags |= info.map_flags & BPF_F_RDONLY_PROG;
                }
                _ => {}
            }
            // Typed map operations and initialization use the object's buffer sizes,
            // while the kernel copies according to the actual map's layout.
            macro_rules! property {
                ($name:ident, $expected:expr, $actual:expr) => {
                    (stringify!($name), u64::from($expected), u64::from($actual))
                };
            }
            for (property, expected, actual) in [
                property!(map_type, map_type, info.type_),
                property!(key_size, obj.key_size(), info.key_size),
                property!(value_size, obj.value_size(), info.value_size),
                property!(max_entries, max_entries, info.max_entries),
                property!(map_flags, map_flags, kernel_map_flags),
                property!(map_extra, obj.map_extra(), info.map_extra),
            ] {
                if expected != actual {
                    return Err(MapError::IncompatiblePinnedMap {
                        name: name.into(),
                        property,
                        expected,
                        actual,
                    });
                }
            }
            Ok(Self {
                obj,
                fd: MapFd::from_fd(fd),
            })
        } else {
            let inner_map;
            let inner_map_fd = if let Some(inner) = inner_map_obj {
                inner_map = Self::create(inner, &format!("{name}.inner"), btf_fd)?;
                Some(inner_map.fd().as_fd())
            } else {
                None
            };
            let map = Self::create_with_inner_map_fd(obj, name, btf_fd, inner_map_fd)?;
            map.pin(path).map_err(|error| MapError::PinError {
                name: Some(name.into()),
                error,
            })?;
            Ok(map)
        }
    }

    pub(crate) fn finalize(&mut self) -> Result<(), MapError> {
        let Self { obj, fd } = self;
        if !obj.data().is_empty() {
            bpf_map_update_elem_ptr(fd.as_fd(), &0, obj.data_mut().as_mut_ptr(), 0)
                .map_err(|io_error| SyscallError {
                    call: "bpf_map_update_elem",
                    io_error,
                })
                .map_err(MapError::from)?;
        }
        if obj.section_kind() == EbpfSectionKind::Rodata {
            bpf_map_freeze(fd.as_fd())
                .map_err(|io_error| SyscallError {
                    call: "bpf_map_freeze",
                    io_error,
                })
                .map_err(MapError::from)?;
        }
        Ok(())
    }

    /// Loads a map from a pinned path in bpffs.
    pub fn from_pin<P: AsRef<Path>>(path: P) -> Result<Self, MapError> {
        use std::os::unix::ffi::OsStrExt as _;

        let path = path.as_ref();
        let path_string =
            CString::new(path.as_os_str().as_bytes()).map_err(|error| MapError::PinError {
                name: None,
                error: PinError::InvalidPinPath {
                    path: path.into(),
                    error,
                },
            })?;

        let fd = bpf_get_object(&path_string).map_err(|io_error| SyscallError {
            call: "BPF_OBJ_GET",
            io_error,
        })?;

        Self::from_fd_inner(fd)
    }

    /// Loads a map from a map id.
    pub fn from_id(id: u32) -> Result<Self, MapError> {
        let fd = bpf_map_get_fd_by_id(id)?;
        Self::from_fd_inner(fd)
    }

    fn from_fd_inner(fd: crate::MockableFd) -> Result<Self, MapError> {
        let MapInfo(info) = MapInfo::new_from_fd(fd.as_fd())?;
        Ok(Self {
            obj: parse_map_info(info, PinningType::None),
            fd: MapFd::from_fd(fd),
        })
    }

    /// Loads a map from a file descriptor.
    ///
    /// If loading from a BPF Filesystem (bpffs) you should use [`Map::from_pin`](crate::maps::MapData::from_pin).
    /// This API is intended for cases where you have received a valid BPF FD from some other means.
    /// For example, you received an FD over Unix Domain Socket.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, MapError> {
        let fd = crate::MockableFd::from_fd(fd);
        Self::from_fd_inner(fd)
    }

    /// Allows the map to be pinned to the provided path.
    ///
    /// Any directories in the the path provided should have been created by the caller.
    /// The path must be on a BPF filesystem.
    ///
    /// # Errors
    ///
    /// Returns a [`PinError::SyscallError`] if the underlying syscall fails.
    /// This may also happen if the path already exists, in which case the wrapped
    /// [`std::io::Error`] kind will be [`std::io::ErrorKind::AlreadyExists`].
    /// Returns a [`PinError::InvalidPinPath`] if the path provided cannot be
    /// converted to a [`CString`].
    ///
    /// # Example
    ///
    /// ```no_run
    /// # let mut bpf = aya::Ebpf::load(&[])?;
    /// # use aya::maps::MapData;
    ///
    /// let mut map = MapData::from_pin("/sys/fs/bpf/my_map")?;
    /// map.pin("/sys/fs/bpf/my_map2")?;
    ///
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pin<P: AsRef<Path>>(&self, path: P) -> Result<(), PinError> {
        use std::os::unix::ffi::OsStrExt as _;

        let Self { fd, obj: _ } = self;
        let path = path.as_ref();
        let path_string = CString::new(path.as_os_str().as_bytes()).map_err(|error| {
            PinError::InvalidPinPath {
                path: path.to_path_buf(),
                error,
            }
        })?;
        bpf_pin_object(fd.as_fd(), &path_string).map_err(|io_error| SyscallError {
            call: "BPF_OBJ_PIN",
            io_error,
        })?;
        Ok(())
    }

    /// Returns the file descriptor of the map.
    pub const fn fd(&self) -> &MapFd {
        let Self { obj: _, fd } = self;
        fd
    }

    pub(crate) const fn obj(&self) -> &aya_obj::Map {
        let Self { obj, fd: _ } = self;
        obj
    }

    /// Returns the kernel's information about the loaded map.
    pub fn info(&self) -> Result<MapInfo, MapError> {
        MapInfo::new_from_fd(self.fd.as_fd())
    }
}

/// An iterable map
pub trait IterableMap<K: Pod, V> {
    /// Get a generic map handle
    fn map(&self) -> &MapData;

    /// Get the value for the provided `key`
    fn get(&self, key: &K) -> Result<V, MapError>;
}

/// Iterator returned by `map.keys()`.
pub struct MapKeys<'coll, K: Pod> {
    map: &'coll MapData,
    err: bool,
    key: Option<K>,
}

impl<'coll, K: Pod> MapKeys<'coll, K> {
    const fn new(map: &'coll MapData) -> Self {
        Self {
            map,
            err: false,
            key: None,
        }
    }
}

impl<K: Pod> Iterator for MapKeys<'_, K> {
    type Item = Result<K, MapError>;

    fn next(&mut self) -> Option<Result<K, MapError>> {
        if self.err {
            return None;
        }

        let fd = self.map.fd().as_fd();
        let key = bpf_map_get_next_key(fd, self.key.as_ref()).map_err(|io_error| SyscallError {
            call: "bpf_map_get_next_key",
            io_error,
        });
        match key {
            Err(err) => {
                self.err = true;
                Some(Err(err.into()))
            }
            Ok(key) => {
                self.key = key;
                key.map(Ok)
            }
        }
    }
}

/// Iterator returned by `map.iter()`.
pub struct MapIter<'coll, K: Pod, V, I: IterableMap<K, V>> {
    keys: MapKeys<'coll, K>,
    map: &'coll I,
    _v: PhantomData<V>,
}

impl<'coll, K: Pod, V, I: IterableMap<K, V>> MapIter<'coll, K, V, I> {
    fn new(map: &'coll I) -> Self {
        Self {
            keys: MapKeys::new(map.map()),
            map,
            _v: PhantomData,
        }
    }
}

impl<K: Pod, V, I: IterableMap<K, V>> Iterator for MapIter<'_, K, V, I> {
    type Item = Result<(K, V), MapError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.keys.next() {
                Some(Ok(key)) => match self.map.get(&key) {
                    Ok(value) => return Some(Ok((key, value))),
                    Err(MapError::KeyNotFound) => {}
                    Err(e) => return Some(Err(e)),
                },
                Some(Err(e)) => return Some(Err(e)),
                None => return None,
            }
        }
    }
}

pub(crate) struct PerCpuKernelMem {
    bytes: Vec<u8>,
}

impl PerCpuKernelMem {
    pub(crate) const fn as_mut_ptr(&mut self) -> *mut u8 {
        self.bytes.as_mut_ptr()
    }
}

/// A slice of per-CPU values.
///
/// Used by maps that implement per-CPU storage like [`PerCpuHashMap`].
///
/// # Examples
///
/// ```no_run
/// # #[derive(thiserror::Error, Debug)]
/// # enum Error {
/// #     #[error(transparent)]
/// #     IO(#[from] std::io::Error),
/// #     #[error(transparent)]
/// #     Map(#[from] aya::maps::MapError),
/// #     #[error(transparent)]
/// #     Ebpf(#[from] aya::EbpfError)
/// # }
/// # let bpf = aya::Ebpf::load(&[])?;
/// use aya::maps::PerCpuValues;
/// use aya::util::nr_cpus;
///
/// let nr_cpus = nr_cpus().map_err(|(_, error)| error)?;
/// let values = PerCpuValues::try_from(vec![42u32; nr_cpus.get() as usize])?;
/// # Ok::<(), Error>(())
/// ```
#[derive(Debug)]
pub struct PerCpuValues<T: Pod> {
    values: Box<[T]>,
}

impl<T: Pod> TryFrom<Vec<T>> for PerCpuValues<T> {
    type Error = io::Error;

    fn try_from(values: Vec<T>) -> Result<Self, Self::Error> {
        let nr_cpus = nr_cpus().map_err(|(_, error)| error)?;
        if values.len() != nr_cpus.get() as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not enough values ({}), nr_cpus: {}", values.len(), nr_cpus),
            ));
        }
        Ok(Self {
            values: values.into_boxed_slice(),
        })
    }
}

impl<T: Pod> PerCpuValues<T> {
    pub(crate) fn alloc_kernel_mem() -> Result<PerCpuKernelMem, io::Error> {
        let value_size = size_of::<T>().next_multiple_of(8);
        let nr_cpus = nr_cpus().map_err(|(_, error)| error)?;
        Ok(PerCpuKernelMem {
            bytes: vec![0u8; nr_cpus.get() as usize * value_size],
        })
    }

    pub(crate) unsafe fn from_kernel_mem(mem: PerCpuKernelMem) -> Self {
        let stride = size_of::<T>().next_multiple_of(8);
        let mut values = Vec::new();
        let mut offset = 0;
        while offset < mem.bytes.len() {
            values.push(unsafe { ptr::read_unaligned(mem.bytes.as_ptr().add(offset).cast()) });
            offset += stride;
        }

        Self {
            values: values.into_boxed_slice(),
        }
    }

    pub(crate) fn build_kernel_mem(&self) -> Result<PerCpuKernelMem, io::Error> {
        let mut mem = Self::alloc_kernel_mem()?;
        let mem_ptr = mem.as_mut_ptr();
        let value_size = size_of::<T>().next_multiple_of(8);
        for (i, value) in self.values.iter().enumerate() {
            unsafe { ptr::write_unaligned(mem_ptr.byte_add(i * value_size).cast(), *value) }
        }

        Ok(mem)
    }
}

impl<T: Pod> Deref for PerCpuValues<T> {
    type Target = Box<[T]>;

    fn deref(&self) -> &Self::Target {
        &self.values
    }
}

#[cfg(test)]
mod test_utils {
    use aya_obj::{
        EbpfSectionKind,
        generated::{bpf_cmd, bpf_map_type},
        maps::LegacyMap,
    };

    use crate::{
        bpf_map_def,
        maps::MapData,
        sys::{Syscall, override_syscall},
    };

    pub(super) fn new_map(obj: aya_obj::Map) -> MapData {
        override_syscall(|call| match call {
            Syscall::Ebpf {
                cmd: bpf_cmd::BPF_MAP_CREATE,
                ..
            } => Ok(crate::MockableFd::mock_signed_fd().into()),
            call => panic!("unexpected syscall {call:?}"),
        });
        MapData::create(obj, "foo", None).unwrap()
    }

    pub(super) fn new_obj_map<K>(map_type: bpf_map_type) -> aya_obj::Map {
        aya_obj::Map::Legacy(LegacyMap {
            def: bpf_map_def {
                map_type: map_type as u32,
                key_size: size_of::<K>() as u32,
                value_size: 4,
                max_entries: 1024,
                ..Default::default()
            },
            inner_def: None,
            section_index: 0,
            section_kind: EbpfSectionKind::Maps,
            data: Vec::new(),
            symbol_index: None,
        })
    }

    pub(super) fn new_obj_map_with_max_entries<K>(
        map_type: bpf_map_type,
        max_entries: u32,
    ) -> aya_obj::Map {
        aya_obj::Map::Legacy(LegacyMap {
            def: bpf_map_def {
                map_type: map_type as u32,
                key_size: size_of::<K>() as u32,
                value_size: 4,
                max_entries,
                ..Default::default()
            },
            inner_def: None,
            section_index: 0,
            section_kind: EbpfSectionKind::Maps,
            data: Vec::new(),
            symbol_index: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::Cell, ffi::c_char, os::fd::AsRawFd as _};

    use assert_matches::assert_matches;
    use aya_obj::generated::{bpf_cmd, bpf_map_info};
    use libc::EFAULT;
    use rstest::rstest;

    use super::*;
    use crate::sys::{Syscall, override_syscall};

    fn new_obj_map() -> aya_obj::Map {
        test_utils::new_obj_map::<u32>(bpf_map_type::BPF_MAP_TYPE_HASH)
    }

    fn pinned_map_info() -> bpf_map_info {
        bpf_map_info {
            type_: bpf_map_type::BPF_MAP_TYPE_HASH as u32,
            id: 0,
            key_size: 4,
            value_size: 4,
            max_entries: 1024,
            map_flags: 0,
            name: [0; 16],
            ifindex: 0,
            btf_vmlinux_value_type_id: 0,
            netns_dev: 0,
            netns_ino: 0,
            btf_id: 0,
            btf_key_type_id: 0,
            btf_value_type_id: 0,
            btf_vmlinux_id: 0,
            map_extra: 0,
            hash: 0,
            hash_size: 0,
        }
    }

    thread_local! {
        static PINNED_MAP_INFO: Cell<Option<bpf_map_info>> = const { Cell::new(None) };
    }

    fn mock_pinned_map(info: bpf_map_info) {
        PINNED_MAP_INFO.set(Some(info));
        override_syscall(|call| match call {
            Syscall::Ebpf {
                cmd: bpf_cmd::BPF_OBJ_GET,
                attr: _,
            } => Ok(crate::MockableFd::mock_signed_fd().into()),
            Syscall::Ebpf {
                cmd: bpf_cmd::BPF_OBJ_GET_INFO_BY_FD,
                attr,
            } => {
                let output = unsafe { attr.info };
                assert_eq!(output.bpf_fd, crate::MockableFd::mock_unsigned_fd());
                assert_eq!(output.info_len, size_of::<bpf_map_info>() as u32);
                let output = ptr::with_exposed_provenance_mut::<bpf_map_info>(output.info as usize);
                let info = PINNED_MAP_INFO.get().unwrap();
                // SAFETY: the syscall supplied a writable bpf_map_info buffer.
                unsafe {
                    *output = info;
                }
                Ok(0)
            }
            call => panic!("unexpected syscall {call:?}"),
        });
    }

    #[rstest]
    #[case::hash(bpf_map_type::BPF_MAP_TYPE_HASH, 0, 0)]
    #[case::descriptor_readonly(bpf_map_type::BPF_MAP_TYPE_HASH, BPF_F_RDONLY, 0)]
    #[case::descriptor_writeonly(bpf_map_type::BPF_MAP_TYPE_HASH, BPF_F_WRONLY, 0)]
    #[case::reported_descriptor_readonly(
        bpf_map_type::BPF_MAP_TYPE_HASH,
        BPF_F_RDONLY,
        BPF_F_RDONLY
    )]
    #[case::reported_descriptor_writeonly(
        bpf_map_type::BPF_MAP_TYPE_HASH,
        BPF_F_WRONLY,
        BPF_F_WRONLY
    )]
    #[case::devmap_descriptor_readonly(
        bpf_map_type::BPF_MAP_TYPE_DEVMAP,
        BPF_F_RDONLY,
        BPF_F_RDONLY_PROG
    )]
    #[case::devmap(bpf_map_type::BPF_MAP_TYPE_DEVMAP, 0, BPF_F_RDONLY_PROG)]
    #[case::devmap_without_readonly(bpf_map_type::BPF_MAP_TYPE_DEVMAP, 0, 0)]
    #[case::devmap_hash(bpf_map_type::BPF_MAP_TYPE_DEVMAP_HASH, 0, BPF_F_RDONLY_PROG)]
    #[case::explicit_readonly(
        bpf_map_type::BPF_MAP_TYPE_DEVMAP,
        BPF_F_RDONLY_PROG,
        BPF_F_RDONLY_PROG
    )]
    fn test_reuse_pinned_map(
        #[case] map_type: bpf_map_type,
        #[case] flags: u32,
        #[case] kernel_flags: u32,
    ) {
        const DATA: [u8; 4] = [1, 2, 3, 4];

        mock_pinned_map(bpf_map_info {
            type_: map_type as u32,
            map_flags: kernel_flags,
            ..pinned_map_info()
        });
        let mut obj = aya_obj::Map::new_from_params(map_type as u32, 4, 4, 1024, flags);
        obj.data_mut().extend_from_slice(&DATA);
        let map = MapData::create_pinned_by_name("/pin/foo", obj, "foo", None, None).unwrap();
        assert_eq!(
            map.fd().as_fd().as_raw_fd(),
            crate::MockableFd::mock_signed_fd()
        );
        assert_eq!(map.obj.data(), &DATA);
        assert_eq!(map.obj.map_flags(), flags);
    }

    #[rstest]
    #[case::map_type(new_obj_map(), bpf_map_info { type_: bpf_map_type::BPF_MAP_TYPE_PERCPU_HASH as u32, ..pinned_map_info() }, "map_type", 1, 5)]
    #[case::key_size(new_obj_map(), bpf_map_info { key_size: 8, ..pinned_map_info() }, "key_size", 4, 8)]
    #[case::value_size(new_obj_map(), bpf_map_info { value_size: 4096, ..pinned_map_info() }, "value_size", 4, 4096)]
    #[case::max_entries(new_obj_map(), bpf_map_info { max_entries: 2048, ..pinned_map_info() }, "max_entries", 1024, 2048)]
    #[case::map_flags(new_obj_map(), bpf_map_info { map_flags: BPF_F_RDONLY_PROG, ..pinned_map_info() }, "map_flags", 0, u64::from(BPF_F_RDONLY_PROG))]
    #[case::map_extra(new_obj_map(), bpf_map_info { map_extra: 1, ..pinned_map_info() }, "map_extra", 0, 1)]
    #[case::devmap_missing_readonly(
        aya_obj::Map::new_from_params(bpf_map_type::BPF_MAP_TYPE_DEVMAP as u32, 4, 4, 1024, BPF_F_RDONLY_PROG),
        bpf_map_info { type_: bpf_map_type::BPF_MAP_TYPE_DEVMAP as u32, ..pinned_map_info() },
        "map_flags",
        u64::from(BPF_F_RDONLY_PROG),
        0
    )]
    fn test_reuse_incompatible_pinned_map(
        #[case] obj: aya_obj::Map,
        #[case] info: bpf_map_info,
        #[case] property: &'static str,
        #[case] expected: u64,
        #[case] actual: u64,
    ) {
        mock_pinned_map(info);
        assert_matches!(
            MapData::create_pinned_by_name("/pin/foo", obj, "foo", None, None),
            Err(MapError::IncompatiblePinnedMap {
                name,
                property: got_property,
                expected: got_expected,
                actual: got_actual,
            }) => {
                assert_eq!(name, "foo");
                assert_eq!(got_property, property);
                assert_eq!(got_expected, expected);
                assert_eq!(got_actual, actual);
            }
        );
    }

    #[test]
    fn test_reuse_pinned_map_info_error() {
        override_syscall(|call| match call {
            Syscall::Ebpf {
                cmd: bpf_cmd::BPF_OBJ_GET,
                attr: _,
            } => Ok(crate::MockableFd::mock_signed_fd().into()),
            Syscall::Ebpf {
                cmd: bpf_cmd::BPF_OBJ_GET_INFO_BY_FD,
                attr: _,
            } => Err((-1, io::Error::from_raw_os_error(EFAULT))),
            call => panic!("unexpected syscall {call:?}"),
        });
        assert_matches!(
            MapData::create_pinned_by_name("/pin/foo", new_obj_map(), "foo", None, None),
            Err(MapError::SyscallError(SyscallError { call, io_error })) => {
                assert_eq!(call, "bpf_obj_get_info_by_fd");
                assert_eq!(io_error.raw_os_error(), Some(EFAULT));
            }
        );
    }

    #[rstest]
    #[case::round_up(5, 6, 3, 6)]
    #[case::already_rounded(6, 7, 3, 6)]
    #[case::overflow_power_of_two(u32::MAX, u32::MAX - 3, 4, u32::MAX - 3)]
    #[case::overflow_non_power_of_two(u32::MAX - 1, u32::MAX - 3, 3, u32::MAX - 3)]
    fn test_reuse_lru_max_entries(
        #[case] requested: u32,
        #[case] actual: u32,
        #[case] num_cpus: u32,
        #[case] expected: u32,
    ) {
        let num_cpus = NonZeroU32::new(num_cpus).unwrap();
        assert_eq!(
            lru_max_entries(requested, actual, || Ok(num_cpus)).unwrap(),
            expected
        );
    }

    #[test]
    fn test_reuse_lru_matching_capacity_needs_no_cpus() {
        assert_eq!(
            lru_max_entries(6, 6, || panic!("matching capacity must not query CPUs")).unwrap(),
            6
        );
    }

    #[test]
    fn test_reuse_lru_cpu_query_error() {
        assert_matches!(
            lru_max_entries(5, 6, || Err((
                "/sys/devices/system/cpu/possible",
                io::Error::from_raw_os_error(libc::ENOENT)
            ))),
            Err(MapError::IoError(error)) => {
                assert_eq!(error.raw_os_error(), Some(libc::ENOENT));
            }
        );
    }

    #[rstest]
    #[case::hash(bpf_map_type::BPF_MAP_TYPE_LRU_HASH)]
    #[case::percpu_hash(bpf_map_type::BPF_MAP_TYPE_LRU_PERCPU_HASH)]
    fn test_reuse_pinned_lru_map(
        #[case] map_type: bpf_map_type,
        #[values(0, BPF_F_NO_COMMON_LRU)] flags: u32,
        #[values(false, true)] incompatible: bool,
    ) {
        let num_cpus = nr_cpus().unwrap().get();
        let requested = num_cpus + 1;
        let capacity = if flags == 0 { requested } else { num_cpus * 2 };
        let actual = capacity + u32::from(incompatible);
        mock_pinned_map(bpf_map_info {
            type_: map_type as u32,
            max_entries: actual,
            map_flags: flags,
            ..pinned_map_info()
        });
        let obj = aya_obj::Map::new_from_params(map_type as u32, 4, 4, requested, flags);
        let result = MapData::create_pinned_by_name("/pin/foo", obj, "foo", None, None);
        if incompatible {
            assert_matches!(
                result,
                Err(MapError::IncompatiblePinnedMap {
                    name,
                    property,
                    expected,
                    actual: got_actual,
                }) => {
                    assert_eq!(name, "foo");
                    assert_eq!(property, "max_entries");
                    assert_eq!(expected, u64::from(capacity));
                    assert_eq!(got_actual, u64::from(actual));
                }
            );
        } else {
            let map = result.unwrap();
            assert_eq!(map.obj.max_entries(), requested);
            assert_eq!(
                map.fd().as_fd().as_raw_fd(),
                crate::MockableFd::mock_signed_fd()
            );
        }
    }

    #[test]
    fn test_create_missing_pinned_lru_map() {
        override_syscall(|call| match call {
            Syscall::Ebpf {
                cmd: bpf_cmd::BPF_OBJ_GET,
                attr: _,
            } => Err((-1, io::Error::from_raw_os_error(libc::ENOENT))),
            Syscall::Ebpf {
                cmd: bpf_cmd::BPF_MAP_CREATE,
                attr,
            } => {
                let attr = unsafe { attr.__bindgen_anon_1 };
                assert_eq!(attr.map_type, bpf_map_type::BPF_MAP_TYPE_LRU_HASH as u32);
                assert_eq!(attr.max_entries, 5);
                assert_eq!(attr.map_flags, BPF_F_NO_COMMON_LRU);
                Ok(crate::MockableFd::mock_signed_fd().into())
            }
            Syscall::Ebpf {
                cmd: bpf_cmd::BPF_OBJ_PIN,
                attr: _,
            } => Ok(0),
            call => panic!("unexpected syscall {call:?}"),
        });
        let obj = aya_obj::Map::new_from_params(
            bpf_map_type::BPF_MAP_TYPE_LRU_HASH as u32,
            4,
            4,
            5,
            BPF_F_NO_COMMON_LRU,
        );
        let map = MapData::create_pinned_by_name("/pin/foo", obj, "foo", None, None).unwrap();
        assert_eq!(map.obj.max_entries(), 5);
    }

    #[test]
    fn test_from_map_id() {
        override_syscall(|call| match call {
            Syscall::Ebpf {
                cmd: bpf_cmd::BPF_MAP_GET_FD_BY_ID,
                attr,
            } => {
                assert_eq!(
                    unsafe { attr.__bindgen_anon_6.__bindgen_anon_1.map_id },
                    1234
                );
                Ok(crate::MockableFd::mock_signed_fd().into())
            }
            Syscall::Ebpf {
                cmd: bpf_cmd::BPF_OBJ_GET_INFO_BY_FD,
                attr,
            } => {
                assert_eq!(
                    unsafe { attr.info.bpf_fd },
                    crate::MockableFd::mock_unsigned_fd(),
                );
                Ok(0)
            }
            _ => Err((-1, io::Error::from_raw_os_error(EFAULT))),
        });

        assert_matches!(
            MapData::from_id(1234),
            Ok(MapData {
                obj: _,
                fd,
            }) => assert_eq!(fd.as_fd().as_raw_fd(), crate::MockableFd::mock_signed_fd())
        );
    }

    #[test]
    fn test_create() {
        override_syscall(|call| match call {
            Syscall::Ebpf {
                cmd: bpf_cmd::BPF_MAP_CREATE,
                ..
            } => Ok(crate::MockableFd::mock_signed_fd().into()),
            _ => Err((-1, io::Error::from_raw_os_error(EFAULT))),
        });

        assert_matches!(
            MapData::create(new_obj_map(), "foo", None),
            Ok(MapData {
                obj: _,
                fd,
            }) => assert_eq!(fd.as_fd().as_raw_fd(), crate::MockableFd::mock_signed_fd())
        );
    }

    #[test]
    fn test_create_perf_event_array() {
        override_syscall(|call| match call {
            Syscall::Ebpf {
                cmd: bpf_cmd::BPF_MAP_CREATE,
                ..
            } => Ok(crate::MockableFd::mock_signed_fd().into()),
            _ => Err((-1, io::Error::from_raw_os_error(EFAULT))),
        });

        // Create with max_entries = 0 is set to nr_cpus
        let nr_cpus = nr_cpus().unwrap().get();
        assert_matches!(
            MapData::create(test_utils::new_obj_map_with_max_entries::<u32>(
                bpf_map_type::BPF_MAP_TYPE_PERF_EVENT_ARRAY,
                0,
            ), "foo", None),
            Ok(MapData {
                obj,
                fd,
            }) => {
                assert_eq!(fd.as_fd().as_raw_fd(), crate::MockableFd::mock_signed_fd());
                assert_eq!(obj.max_entries(), nr_cpus)
            }
        );

        // Non-zero values are preserved.
        assert_matches!(
            MapData::create(test_utils::new_obj_map_with_max_entries::<u32>(
                bpf_map_type::BPF_MAP_TYPE_PERF_EVENT_ARRAY,
                nr_cpus + 1,
            ), "foo", None),
            Ok(MapData {
                obj,
                fd,
            }) => {
                assert_eq!(fd.as_fd().as_raw_fd(), crate::MockableFd::mock_signed_fd());
                assert_eq!(obj.max_entries(), nr_cpus + 1)
            }
        );
    }

    #[test]
    fn test_name() {
        const TEST_NAME: &str = "foo";

        override_syscall(|call| match call {
            Syscall::Ebpf {
                cmd: bpf_cmd::BPF_MAP_CREATE,
                ..
            } => Ok(crate::MockableFd::mock_signed_fd().into()),
            Syscall::Ebpf {
                cmd: bpf_cmd::BPF_OBJ_GET_INFO_BY_FD,
                attr,
            } => {
                assert_eq!(
                    unsafe { attr.info.info_len },
                    size_of::<bpf_map_info>() as u32
                );
                unsafe {
                    let name_bytes = std::mem::transmute::<&[u8], &[c_char]>(TEST_NAME.as_bytes());
                    let info_addr = attr.info.info;
                    let p = ptr::with_exposed_provenance_mut::<bpf_map_info>(info_addr as usize);
                    // Reborrow mutably so Miri checks the output pointer's write permission.
                    // Recovering a pointer alone does not grant that permission.
                    let map_info = &mut *p;
                    map_info.name[..name_bytes.len()].copy_from_slice(name_bytes);
                }
                Ok(0)
            }
            _ => Err((-1, io::Error::from_raw_os_error(EFAULT))),
        });

        let map_data = MapData::create(new_obj_map(), TEST_NAME, None).unwrap();
        assert_eq!(TEST_NAME, map_data.info().unwrap().name_as_str().unwrap());
    }

    #[test]
    fn test_loaded_maps() {
        override_syscall(|call| match call {
            Syscall::Ebpf {
                cmd: bpf_cmd::BPF_MAP_GET_NEXT_ID,
                attr,
            } => unsafe {
                let id = attr.__bindgen_anon_6.__bindgen_anon_1.start_id;
                if id < 5 {
                    attr.__bindgen_anon_6.next_id = id + 1;
                    Ok(0)
                } else {
                    Err((-1, io::Error::from_raw_os_error(libc::ENOENT)))
                }
            },
            Syscall::Ebpf {
                cmd: bpf_cmd::BPF_MAP_GET_FD_BY_ID,
                attr,
            } => Ok((unsafe { attr.__bindgen_anon_6.__bindgen_anon_1.map_id }
                + crate::MockableFd::mock_unsigned_fd())
            .into()),
            Syscall::Ebpf {
                cmd: bpf_cmd::BPF_OBJ_GET_INFO_BY_FD,
                attr,
            } => {
                unsafe {
                    let info = attr.info;
                    let map_info =
                        ptr::with_exposed_provenance_mut::<bpf_map_info>(info.info as usize);
                    map_info.write({
                        let mut map_info = map_info.read();
                        map_info.id = info.bpf_fd - crate::MockableFd::mock_unsigned_fd();
                        map_info.key_size = 32;
                        map_info.value_size = 64;
                        map_info.map_flags = 1234;
                        map_info.max_entries = 99;
                        map_info
                    });
                }
                Ok(0)
            }
            _ => Err((-1, io::Error::from_raw_os_error(EFAULT))),
        });

        assert_eq!(
            loaded_maps()
                .map(|map_info| {
                    let map_info = map_info.unwrap();
                    (
                        map_info.id(),
                        map_info.key_size(),
                        map_info.value_size(),
                        map_info.map_flags(),
                        map_info.max_entries(),
                        map_info.fd().unwrap().as_fd().as_raw_fd(),
                    )
                })
                .collect::<Vec<_>>(),
            (1..6)
                .map(|i: u8| (
                    i.into(),
                    32,
                    64,
                    1234,
                    99,
                    crate::MockableFd::mock_signed_fd() + i32::from(i)
                ))
                .collect::<Vec<_>>(),
        );
    }

    #[test]
    fn test_create_failed() {
        override_syscall(|_| Err((-1, io::Error::from_raw_os_error(EFAULT))));

        assert_matches!(
            MapData::create(new_obj_map(), "foo", None),
            Err(MapError::CreateError { name, io_error }) => {
                assert_eq!(name, "foo");
                assert_eq!(io_error.raw_os_error(), Some(EFAULT));
            }
        );
    }

    #[test]
    fn test_from_map_data_reuseport_sock_array() {
        let map_data = test_utils::new_map(test_utils::new_obj_map::<u32>(
            bpf_map_type::BPF_MAP_TYPE_REUSEPORT_SOCKARRAY,
        ));

        let map = Map::from_map_data(map_data).unwrap();
        let _typed: ReusePortSockArray<_> = map.try_into().unwrap();
    }

    #[test]
    fn test_reuseport_sock_array_pin() {
        let map = ReusePortSockArray::new(test_utils::new_map(test_utils::new_obj_map::<u32>(
            bpf_map_type::BPF_MAP_TYPE_REUSEPORT_SOCKARRAY,
        )))
        .unwrap();

        override_syscall(|call| match call {
            Syscall::Ebpf {
                cmd: bpf_cmd::BPF_OBJ_PIN,
                ..
            } => Ok(0),
            _ => Err((-1, io::Error::from_raw_os_error(EFAULT))),
        });

        assert_matches!(map.pin("/sys/fs/bpf/socket_map"), Ok(()));
    }
}
