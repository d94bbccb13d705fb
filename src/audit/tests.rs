//! Tamper and lifecycle tests over real files.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use super::*;

fn signer() -> AuditSigner {
    AuditSigner::generate(KeyId::new("audit-1").unwrap(), &mut rand::rngs::OsRng)
}

fn signer_from(s: &AuditSigner) -> AuditSigner {
    AuditSigner::from_pkcs8_pem(s.id().clone(), &s.to_pkcs8_pem().unwrap()).unwrap()
}

fn log_id() -> LogId {
    LogId::new("cloister:test").unwrap()
}

const POLICY: SyncPolicy = SyncPolicy {
    checkpoint_every: 100,
    fsync: FsyncPolicy::EveryN(50),
};

fn event(i: u64) -> AuditEvent {
    AuditEvent::RequestCompleted {
        request_id: RequestId::new(format!("req-{i}")).unwrap(),
        tenant: TenantId::new(format!("tenant-{}", i % 7)).unwrap(),
        model: ModelId::new("smollm2-135m").unwrap(),
        prompt_tokens: 3,
        completion_tokens: (i % 500) as u32,
        finish_reason: FinishReason::Stop,
        watermark_key_id: Some(KeyId::new("wm-1").unwrap()),
    }
}

/// A log of `n` records written through `AuditLog` (checkpoint every 100, closed cleanly).
fn build(dir: &Path, s: &AuditSigner, n: u64) -> PathBuf {
    let path = dir.join("audit.log");
    let mut log = AuditLog::open(&path, log_id(), signer_from(s), POLICY).unwrap();
    for i in 0..n {
        assert_eq!(log.append(1_000 * i, event(i)).unwrap(), i);
    }
    log.close(1_000 * n).unwrap();
    path
}

fn split(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes
        .split_inclusive(|b| *b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

/// 1-based line number of the record with `seq`.
fn line_of(lines: &[Vec<u8>], seq: u64) -> u64 {
    let prefix = format!("{{\"seq\":{seq},");
    let i = lines
        .iter()
        .position(|l| l.starts_with(prefix.as_bytes()))
        .unwrap();
    i as u64 + 1
}

/// 1-based line number of the checkpoint with `count`.
fn cp_line(lines: &[Vec<u8>], count: u64) -> u64 {
    let needle = format!("\"count\":{count},");
    let i = lines
        .iter()
        .position(|l| {
            l.starts_with(b"{\"checkpoint\":") && String::from_utf8_lossy(l).contains(&needle)
        })
        .unwrap();
    i as u64 + 1
}

fn check(bytes: &[u8], v: &AuditVerifier) -> Result<VerifyReport, VerifyError> {
    verify(Cursor::new(bytes), v)
}

fn fail(bytes: &[u8], v: &AuditVerifier) -> (u64, Option<u64>, VerifyErrorKind) {
    let e = check(bytes, v).unwrap_err();
    (e.line, e.seq, e.kind)
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    signer: AuditSigner,
    bytes: Vec<u8>,
    lines: Vec<Vec<u8>>,
}

fn fixture(n: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let signer = signer();
    let path = build(dir.path(), &signer, n);
    let bytes = std::fs::read(&path).unwrap();
    let lines = split(&bytes);
    Fixture {
        _dir: dir,
        path,
        signer,
        bytes,
        lines,
    }
}

#[test]
fn clean_log_of_1000_verifies() {
    let f = fixture(1000);
    let r = check(&f.bytes, &f.signer.verifier()).unwrap();
    assert_eq!(r.records, 1000);
    assert_eq!(r.checkpoints, 10);
    assert_eq!(r.next_seq, 1000);
    assert_eq!(r.last_checkpoint_count, Some(1000));
    assert_eq!(r.unsealed_tail, 0);
    assert_eq!(r.log_id, Some(log_id()));
    assert_eq!(r.bytes, f.bytes.len() as u64);
    assert_eq!(f.lines.len(), 1010);
    // A different key does not verify it.
    assert!(matches!(
        fail(&f.bytes, &signer().verifier()).2,
        VerifyErrorKind::BadCheckpointSignature(_)
    ));
}

#[test]
fn edited_byte_is_detected_at_the_first_bad_line() {
    let f = fixture(1000);
    let v = f.signer.verifier();
    let line = line_of(&f.lines, 500);
    let start: usize = f.lines[..line as usize - 1].iter().map(Vec::len).sum();
    let text = String::from_utf8(f.lines[line as usize - 1].clone()).unwrap();

    // Still valid and canonical, different value: the next record's prev_hash no longer matches.
    let at = start + text.find("\"prompt_tokens\":3").unwrap() + "\"prompt_tokens\":".len();
    let mut b = f.bytes.clone();
    b[at] = b'4';
    assert_eq!(
        fail(&b, &v),
        (
            line_of(&f.lines, 501),
            Some(501),
            VerifyErrorKind::BrokenChain
        )
    );

    // An edited prev_hash breaks at the record itself.
    let at = start + text.find("\"prev_hash\":\"").unwrap() + 13;
    let mut b = f.bytes.clone();
    b[at] = if b[at] == b'0' { b'1' } else { b'0' };
    assert_eq!(
        fail(&b, &v),
        (line, Some(500), VerifyErrorKind::BrokenChain)
    );

    // Free text where an id belongs: the line does not parse.
    let at = start + text.find("tenant-").unwrap() + 6;
    let mut b = f.bytes.clone();
    b[at] = b' ';
    assert_eq!(fail(&b, &v), (line, None, VerifyErrorKind::BadJson));

    // Whitespace is not canonical.
    let mut b = f.bytes.clone();
    b.insert(start + 1, b' ');
    assert_eq!(
        fail(&b, &v),
        (line, Some(500), VerifyErrorKind::NonCanonical)
    );

    // The very last record edited: caught by the checkpoint after it.
    let last = line_of(&f.lines, 999);
    let mut lines = f.lines.clone();
    let t = String::from_utf8(lines[last as usize - 1].clone())
        .unwrap()
        .replace("\"prompt_tokens\":3", "\"prompt_tokens\":9");
    lines[last as usize - 1] = t.into_bytes();
    let (l, _, k) = fail(&lines.concat(), &v);
    assert_eq!(
        (l, k),
        (
            last + 1,
            VerifyErrorKind::CheckpointMismatch {
                count: 1000,
                expected: 1000
            }
        )
    );
}

#[test]
fn deleted_and_reordered_records_are_detected() {
    let f = fixture(1000);
    let v = f.signer.verifier();
    let line = line_of(&f.lines, 500);

    let mut del = f.lines.clone();
    del.remove(line as usize - 1);
    assert_eq!(
        fail(&del.concat(), &v),
        (
            line,
            Some(501),
            VerifyErrorKind::BadSequence {
                expected: 500,
                found: 501
            }
        )
    );

    let mut swap = f.lines.clone();
    swap.swap(line as usize - 1, line as usize);
    assert_eq!(
        fail(&swap.concat(), &v),
        (
            line,
            Some(501),
            VerifyErrorKind::BadSequence {
                expected: 500,
                found: 501
            }
        )
    );

    // Deleting a whole checkpoint interval (records + checkpoint) still breaks the sequence.
    let (a, b) = (
        line_of(&f.lines, 300) as usize - 1,
        line_of(&f.lines, 400) as usize - 1,
    );
    let mut cut = f.lines.clone();
    cut.drain(a..b);
    assert_eq!(
        fail(&cut.concat(), &v).2,
        VerifyErrorKind::BadSequence {
            expected: 300,
            found: 400
        }
    );
}

#[test]
fn truncation_mid_line_is_an_error() {
    let f = fixture(1000);
    let v = f.signer.verifier();
    let n = f.lines.len() as u64;
    // Inside the final checkpoint line.
    assert_eq!(
        fail(&f.bytes[..f.bytes.len() - 10], &v),
        (n, None, VerifyErrorKind::TruncatedLine)
    );
    // Inside a record line in the middle (everything after it gone).
    let line = line_of(&f.lines, 640);
    let cut: usize = f.lines[..line as usize - 1]
        .iter()
        .map(Vec::len)
        .sum::<usize>()
        + 20;
    let e = check(&f.bytes[..cut], &v).unwrap_err();
    assert_eq!((e.line, e.kind), (line, VerifyErrorKind::TruncatedLine));
    assert_eq!(
        e.offset as usize,
        cut - 20,
        "offset names where the valid prefix ends"
    );
}

#[test]
fn truncated_whole_records_after_last_checkpoint_report_an_unsealed_tail() {
    let f = fixture(1007); // checkpoints at 100..=1000, 7 records, final checkpoint at 1007 (close)
    let v = f.signer.verifier();
    assert_eq!(check(&f.bytes, &v).unwrap().unsealed_tail, 0);
    // Cut the final checkpoint and the last 3 records (a crash or an attacker with only the file).
    let keep = f.lines.len() - 4;
    let r = check(&f.lines[..keep].concat(), &v).unwrap();
    assert_eq!(r.records, 1004);
    assert_eq!(r.last_checkpoint_count, Some(1000));
    assert_eq!(r.unsealed_tail, 4);
    // Also cutting the checkpoint at 1000 leaves 100 unsealed records, said so.
    let r = check(
        &f.lines[..cp_line(&f.lines, 1000) as usize - 1].concat(),
        &v,
    )
    .unwrap();
    assert_eq!(
        (r.records, r.last_checkpoint_count, r.unsealed_tail),
        (1000, Some(900), 100)
    );
}

#[test]
fn forged_checkpoints_are_refused() {
    let f = fixture(1000);
    let v = f.signer.verifier();
    let line = cp_line(&f.lines, 500);
    let text = String::from_utf8(f.lines[line as usize - 1].clone()).unwrap();
    let with = |new: String| {
        let mut l = f.lines.clone();
        l[line as usize - 1] = new.into_bytes();
        l.concat()
    };
    // Changed count, changed head: the signature no longer covers them.
    let b = with(text.replace("\"count\":500,", "\"count\":501,"));
    assert_eq!(
        fail(&b, &v),
        (
            line,
            Some(501),
            VerifyErrorKind::BadCheckpointSignature(SignatureError::Invalid)
        )
    );
    let sc: SignedCheckpoint = serde_json::from_str(text.trim_end()).unwrap();
    let mut cp = sc.checkpoint.clone();
    cp.head_hash[0] ^= 1;
    let mut forged = sc.clone();
    forged.checkpoint = cp.clone();
    let b = with(String::from_utf8(forged.to_line().unwrap()).unwrap());
    assert_eq!(
        fail(&b, &v),
        (
            line,
            Some(500),
            VerifyErrorKind::BadCheckpointSignature(SignatureError::Invalid)
        )
    );

    // Signed by another key under the same id, or under an unknown id.
    let impostor = AuditSigner::generate(KeyId::new("audit-1").unwrap(), &mut rand::rngs::OsRng);
    let b =
        with(String::from_utf8(impostor.sign(sc.checkpoint.clone()).to_line().unwrap()).unwrap());
    assert_eq!(
        fail(&b, &v),
        (
            line,
            Some(500),
            VerifyErrorKind::BadCheckpointSignature(SignatureError::Invalid)
        )
    );
    let stranger = AuditSigner::generate(KeyId::new("evil").unwrap(), &mut rand::rngs::OsRng);
    let b =
        with(String::from_utf8(stranger.sign(sc.checkpoint.clone()).to_line().unwrap()).unwrap());
    assert!(
        matches!(fail(&b, &v), (l, _, VerifyErrorKind::BadCheckpointSignature(SignatureError::UnknownKey(_))) if l == line)
    );

    // A genuine checkpoint replayed at the wrong place.
    let old = f.lines[cp_line(&f.lines, 300) as usize - 1].clone();
    let at = line_of(&f.lines, 350) as usize - 1;
    let mut l = f.lines.clone();
    l.insert(at, old);
    assert_eq!(
        fail(&l.concat(), &v),
        (
            at as u64 + 1,
            Some(300),
            VerifyErrorKind::CheckpointMismatch {
                count: 300,
                expected: 350
            }
        )
    );
}

#[test]
fn reopen_continues_the_chain() {
    let f = fixture(250);
    let mut log = AuditLog::open(&f.path, log_id(), signer_from(&f.signer), POLICY).unwrap();
    assert_eq!(log.opened_report().records, 250);
    assert_eq!(log.next_seq(), 250);
    for i in 250..260 {
        assert_eq!(log.append(1_000 * i, event(i)).unwrap(), i);
    }
    let head = log.head_hash();
    drop(log); // best-effort checkpoint on drop
    let r = check(&std::fs::read(&f.path).unwrap(), &f.signer.verifier()).unwrap();
    assert_eq!((r.records, r.unsealed_tail, r.head_hash), (260, 0, head));
}

#[test]
fn appending_to_a_tampered_log_is_refused() {
    let f = fixture(300);
    let mut lines = f.lines.clone();
    lines.remove(line_of(&f.lines, 120) as usize - 1);
    let tampered = lines.concat();
    std::fs::write(&f.path, &tampered).unwrap();
    let err = AuditLog::open(&f.path, log_id(), signer_from(&f.signer), POLICY).unwrap_err();
    match err {
        AuditError::Tampered { error, .. } => {
            assert_eq!(
                (error.seq, error.kind),
                (
                    Some(121),
                    VerifyErrorKind::BadSequence {
                        expected: 120,
                        found: 121
                    }
                )
            )
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        std::fs::read(&f.path).unwrap(),
        tampered,
        "nothing appended"
    );

    // A torn last line (crash mid-write) is refused too.
    std::fs::write(&f.path, &f.bytes[..f.bytes.len() - 5]).unwrap();
    let err = AuditLog::open(&f.path, log_id(), signer_from(&f.signer), POLICY).unwrap_err();
    assert!(matches!(
        err,
        AuditError::Tampered {
            error: VerifyError {
                kind: VerifyErrorKind::TruncatedLine,
                ..
            },
            ..
        }
    ));
}

#[test]
fn wrong_log_id_and_second_writer_are_refused() {
    let f = fixture(150);
    let other = LogId::new("cloister:other").unwrap();
    assert!(matches!(
        AuditLog::open(&f.path, other, signer_from(&f.signer), POLICY),
        Err(AuditError::WrongLog { .. })
    ));
    let first = AuditLog::open(&f.path, log_id(), signer_from(&f.signer), POLICY).unwrap();
    assert!(matches!(
        AuditLog::open(&f.path, log_id(), signer_from(&f.signer), POLICY),
        Err(AuditError::Locked(_))
    ));
    drop(first);
}

#[cfg(unix)]
#[test]
fn file_mode_is_0600_and_wider_modes_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let f = fixture(5);
    let mode = std::fs::metadata(&f.path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    std::fs::set_permissions(&f.path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        AuditLog::open(&f.path, log_id(), signer_from(&f.signer), POLICY),
        Err(AuditError::InsecurePermissions { mode: 0o644, .. })
    ));
}

#[test]
fn fsync_always_and_key_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let old = signer();
    let policy = SyncPolicy {
        checkpoint_every: 3,
        fsync: FsyncPolicy::Always,
    };
    let mut log = AuditLog::open(&path, log_id(), signer_from(&old), policy).unwrap();
    for i in 0..5 {
        log.append(i, event(i)).unwrap();
    }
    log.close(5).unwrap();
    // New audit key: existing checkpoints verify with the old key as extra trust.
    let new = AuditSigner::generate(KeyId::new("audit-2").unwrap(), &mut rand::rngs::OsRng);
    let opts = OpenOptions {
        log_id: log_id(),
        policy,
        start: ChainStart::Genesis,
        trusted: Some(old.verifier()),
    };
    let mut log = AuditLog::open_with(&path, signer_from(&new), opts).unwrap();
    log.append(6, event(5)).unwrap();
    log.close(7).unwrap();
    let both = old.verifier().merged(&new.verifier());
    let r = verify(
        std::io::BufReader::new(std::fs::File::open(&path).unwrap()),
        &both,
    )
    .unwrap();
    assert_eq!((r.records, r.unsealed_tail), (6, 0));
    assert!(verify(
        std::io::BufReader::new(std::fs::File::open(&path).unwrap()),
        &new.verifier()
    )
    .is_err());
}

#[test]
fn rotated_file_continues_from_previous_head() {
    let f = fixture(120);
    let prev = check(&f.bytes, &f.signer.verifier()).unwrap();
    let next = f.path.with_extension("2.log");
    let start = ChainStart::At {
        seq: prev.next_seq,
        prev_hash: prev.head_hash,
    };
    let opts = OpenOptions {
        log_id: log_id(),
        policy: POLICY,
        start,
        trusted: None,
    };
    let mut log = AuditLog::open_with(&next, signer_from(&f.signer), opts).unwrap();
    assert_eq!(log.append(1, AuditEvent::ServerStop {}).unwrap(), 120);
    log.close(2).unwrap();
    let bytes = std::fs::read(&next).unwrap();
    let v = f.signer.verifier();
    assert_eq!(
        verify_from(Cursor::new(&bytes), &v, start).unwrap().records,
        1
    );
    assert_eq!(
        fail(&bytes, &v).2,
        VerifyErrorKind::BadSequence {
            expected: 0,
            found: 120
        }
    );
}

#[test]
fn export_since_verifies_on_its_own() {
    let f = fixture(1000);
    let v = f.signer.verifier();
    let mut out = Vec::new();
    let rep = export_since(Cursor::new(&f.bytes), 600_000, &mut out).unwrap();
    assert_eq!(
        rep,
        ExportReport {
            records: 400,
            checkpoints: 5,
            first_seq: Some(600)
        }
    );
    assert!(
        out.starts_with(b"{\"checkpoint\":"),
        "boundary checkpoint anchors the export"
    );
    let r = verify_from(Cursor::new(&out), &v, ChainStart::FirstLine).unwrap();
    assert_eq!((r.records, r.checkpoints, r.unsealed_tail), (400, 5, 0));

    let mut out = Vec::new();
    let rep = export_since(Cursor::new(&f.bytes), 650_500, &mut out).unwrap();
    assert_eq!((rep.records, rep.first_seq), (349, Some(651)));
    let r = verify_from(Cursor::new(&out), &v, ChainStart::FirstLine).unwrap();
    assert_eq!((r.records, r.checkpoints), (349, 4));
    // Tampering with the export is caught by the checkpoints that follow.
    let mut lines = split(&out);
    lines[0] = String::from_utf8(lines[0].clone())
        .unwrap()
        .replace("\"completion_tokens\":151", "\"completion_tokens\":1")
        .into_bytes();
    assert!(verify_from(Cursor::new(lines.concat()), &v, ChainStart::FirstLine).is_err());

    let mut out = Vec::new();
    assert_eq!(
        export_since(Cursor::new(&f.bytes), u64::MAX, &mut out)
            .unwrap()
            .records,
        0
    );
    assert!(out.is_empty());
    // A damaged source is not exported silently.
    let mut lines = f.lines.clone();
    lines.remove(10);
    assert!(export_since(Cursor::new(lines.concat()), 0, Vec::new()).is_err());
}

#[test]
fn odd_inputs() {
    let v = signer().verifier();
    let r = check(b"", &v).unwrap();
    assert_eq!((r.records, r.head_hash), (0, GENESIS_HASH));
    let long = vec![b'{'; 20_000];
    assert_eq!(fail(&long, &v), (1, None, VerifyErrorKind::LineTooLong));
    assert_eq!(fail(b"\n", &v), (1, None, VerifyErrorKind::BadJson));
}

#[test]
fn audit_log_is_send() {
    fn send<T: Send>() {}
    send::<AuditLog>();
    send::<AuditSigner>();
}

/// Records queued on the blocking pool (the bulk, client-triggered ones) are all appended before
/// the stop record when the sink closes; none is dropped by a close that races them.
#[test]
fn close_waits_for_background_records() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("audit.key");
    std::fs::write(&key, signer().to_pkcs8_pem().unwrap().as_bytes()).unwrap();
    let cfg = AuditConfig {
        path: dir.path().join("audit.log"),
        signing_key: key,
        public_key: dir.path().join("audit.pub"),
        log_id: "cloister:test".into(),
        key_id: "audit-1".into(),
        checkpoint_every: 1000,
        fsync_every: 1,
        retention_days: 1,
    };
    let sink = std::sync::Arc::new(AuditSink::open(&cfg).unwrap());
    // One blocking thread, held by a gate until close has been called: the queued records
    // cannot run before close starts, so a close that did not wait would drop them all.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(1)
        .build()
        .unwrap();
    let (open_gate, gate) = std::sync::mpsc::channel::<()>();
    runtime.spawn_blocking(move || gate.recv());
    const QUEUED: usize = 64;
    runtime.block_on(async {
        for _ in 0..QUEUED {
            sink.record_in_background(AuditEvent::AuthFailed {
                reason_code: AuthFailReason::Missing,
                tenant: None,
            });
        }
    });
    let closing = std::sync::Arc::clone(&sink);
    let close = std::thread::spawn(move || closing.close(AuditEvent::ServerStop {}));
    std::thread::sleep(std::time::Duration::from_millis(100));
    open_gate.send(()).unwrap();
    close.join().unwrap();
    let text = std::fs::read_to_string(&cfg.path).unwrap();
    let kinds: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            ["AuthFailed", "ServerStop"]
                .into_iter()
                .find(|k| l.contains(k))
        })
        .collect();
    assert_eq!(kinds.len(), QUEUED + 1, "every queued record was appended");
    assert_eq!(kinds.last(), Some(&"ServerStop"), "the stop record is last");
}
