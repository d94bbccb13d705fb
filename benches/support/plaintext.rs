//! A plaintext GGUF loaded the way an unsealed server would load it: header parsed, tensor data
//! read straight into a locked region, model built over it. Only the benches' baselines and the
//! red-team test use this; the server itself loads sealed files only.
#![allow(dead_code)]

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file;
use cloister::engine::LlamaModel;
use cloister::securemem::{LockPolicy, LockedRegion};

/// The parsed GGUF header and the model over its tensor data. `threads = None` sizes the kernel
/// pool to the machine.
pub fn load_plaintext(
    path: &Path,
    policy: LockPolicy,
    threads: Option<usize>,
) -> (gguf_file::Content, LlamaModel) {
    let mut f = BufReader::with_capacity(1 << 20, File::open(path).expect("open gguf"));
    let ct = gguf_file::Content::read(&mut f).expect("gguf header");
    let total = std::fs::metadata(path).expect("gguf size").len() as usize;
    let mut region =
        LockedRegion::new(total - ct.tensor_data_offset as usize, policy).expect("locked region");
    let mut f = File::open(path).expect("open gguf");
    std::io::copy(
        &mut (&mut f).take(ct.tensor_data_offset),
        &mut std::io::sink(),
    )
    .expect("skip header");
    f.read_exact(region.as_mut_slice()).expect("read tensors");
    let region = Arc::new(region);
    let model = match threads {
        Some(n) => LlamaModel::load_with_threads(&ct, region, n),
        None => LlamaModel::load(&ct, region),
    }
    .expect("model");
    (ct, model)
}
