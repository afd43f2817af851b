//! snow's two crypto resolvers side by side (issue 4: "compare snow's resolvers"):
//! RustCrypto (snow's default, what vmtun's handshake uses) and ring (`RingResolver`, with
//! the default as fallback for what ring lacks). Plain snow, not vmtun's code, so both run
//! the same work.
//!
//! - `snow_handshake/*`: one whole Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s handshake, both
//!   sides (initiation written and read, response written and read, keys split). ring has
//!   no X25519 with static keys and no BLAKE2s, so only the few AEAD calls on 32- and
//!   0-byte payloads can change.
//! - `snow_cipher/*/N`: one ChaCha20-Poly1305 seal of an N-byte packet through each
//!   resolver's cipher, as snow's transport mode would do per packet (vmtun's data path
//!   calls ring directly instead; see `data_path`).
//!
//! Run: `cargo bench --bench snow_resolvers`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use snow::params::{CipherChoice, NoiseParams};
use snow::resolvers::{BoxedCryptoResolver, DefaultResolver, FallbackResolver, RingResolver};

const PARAMS: &str = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
const PROLOGUE: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";

type Resolver = fn() -> BoxedCryptoResolver;

const RESOLVERS: [(&str, Resolver); 2] = [
    ("rustcrypto", || Box::new(DefaultResolver)),
    ("ring", || {
        Box::new(FallbackResolver::new(
            Box::new(RingResolver),
            Box::new(DefaultResolver),
        ))
    }),
];

fn builder(resolver: Resolver) -> snow::Builder<'static> {
    let params: NoiseParams = PARAMS.parse().unwrap();
    snow::Builder::with_resolver(params, resolver())
        .prologue(PROLOGUE)
        .unwrap()
}

/// One handshake, both sides; returns the responder's first transport key byte so the
/// work cannot be optimised away.
fn handshake(resolver: Resolver, a: &snow::Keypair, b: &snow::Keypair, psk: &[u8; 32]) -> u8 {
    let mut init = builder(resolver)
        .local_private_key(&a.private)
        .unwrap()
        .remote_public_key(&b.public)
        .unwrap()
        .psk(2, psk)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut resp = builder(resolver)
        .local_private_key(&b.private)
        .unwrap()
        .psk(2, psk)
        .unwrap()
        .build_responder()
        .unwrap();
    let (mut m1, mut m2, mut scratch) = ([0u8; 256], [0u8; 256], [0u8; 256]);
    let n1 = init.write_message(&[0; 12], &mut m1).unwrap();
    resp.read_message(&m1[..n1], &mut scratch).unwrap();
    let n2 = resp.write_message(&[], &mut m2).unwrap();
    init.read_message(&m2[..n2], &mut scratch).unwrap();
    let (_, r2i) = resp.dangerously_get_raw_split();
    r2i[0]
}

fn handshake_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("snow_handshake");
    g.throughput(Throughput::Elements(1));
    let keys = builder(RESOLVERS[0].1);
    let (a, b) = (
        keys.generate_keypair().unwrap(),
        keys.generate_keypair().unwrap(),
    );
    let psk = [7u8; 32];
    for (name, resolver) in RESOLVERS {
        g.bench_function(name, |bench| {
            bench.iter(|| handshake(resolver, &a, &b, black_box(&psk)))
        });
    }
    g.finish();
}

fn cipher_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("snow_cipher");
    for (name, resolver) in RESOLVERS {
        let mut cipher = resolver()
            .resolve_cipher(&CipherChoice::ChaChaPoly)
            .unwrap();
        cipher.set(&[3u8; 32]);
        for size in [64usize, 512, 1420] {
            g.throughput(Throughput::Elements(1));
            let packet = vec![0xabu8; size];
            let mut out = vec![0u8; size + 16];
            let mut nonce = 0u64;
            g.bench_with_input(BenchmarkId::new(name, size), &packet, |bench, p| {
                bench.iter(|| {
                    nonce += 1;
                    cipher.encrypt(nonce, &[], black_box(p), &mut out)
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, handshake_bench, cipher_bench);
criterion_main!(benches);
