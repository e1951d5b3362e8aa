#![allow(non_camel_case_types, dead_code)]

include!(concat!(env!("OUT_DIR"), "/sys.rs"));
