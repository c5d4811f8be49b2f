//! SHA-256 of two messages at once, for `audit verify`, which hashes every event twice
//! (its link in the chain and its Merkle leaf) and can take the events two by two: each
//! event's link is checked against the hash *stored* in the event before it, so two links
//! do not wait on each other.
//!
//! One message's rounds on the CPU's SHA extensions are a chain of instructions, each
//! waiting on the one before, and the SHA unit idles in between; a second message's rounds
//! interleaved with the first's fill those gaps (measured here, on an AMD EPYC: 1.9 GB/s a
//! single stream through `sha2`, 2.8 GB/s two streams, three or four barely more). `sha2`
//! hashes one stream at a time; the multi-buffer crates found (`tape-sha256`) are young and
//! carry far more unsafe code than this. The kernel below is the SHA-NI block function of the
//! Intel white paper, written twice over in lockstep; without the extensions (or off
//! x86-64) both messages go through `sha2` one after the other. Tested against `sha2` for
//! every length through five blocks, on a CPU with the extensions (`.ci/run` sets
//! `PIM_REQUIRE_SHA_NI` where `/proc/cpuinfo` lists them, and the tests then fail rather
//! than compare `sha2` with itself).
//!
//! It is not on any path that writes: a wrong digest here could only make `audit verify`
//! report an event that holds as broken (its stored hash, made by `sha2`, would not match),
//! never pass one that does not hold.

use sha2::{Digest, Sha256};

/// A message as the functions here take it: a short prefix (a domain byte, the previous
/// event's hash), then the body, hashed as if one after the other.
pub type Message<'a> = (&'a [u8], &'a [u8]);

/// SHA-256 of each of two messages.
pub fn pair(a: Message<'_>, b: Message<'_>) -> ([u8; 32], [u8; 32]) {
    #[cfg(target_arch = "x86_64")]
    if ni::available() {
        // SAFETY: the CPU has the features `ni::pair` is compiled for (checked just above).
        return unsafe { ni::pair(a, b) };
    }
    (single(a), single(b))
}

/// SHA-256 of one message, through `sha2` (the fallback, and what the tests hold the
/// kernel to).
fn single((prefix, body): Message<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prefix);
    h.update(body);
    h.finalize().into()
}

/// A message cut into SHA-256's padded 64-byte blocks, one at a time, without copying the
/// message whole.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Blocks<'a> {
    prefix: &'a [u8],
    body: &'a [u8],
    len: usize,
    count: usize,
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl<'a> Blocks<'a> {
    fn new((prefix, body): Message<'a>) -> Self {
        let len = prefix.len() + body.len();
        // The message, the byte 0x80, and its length in bits as eight bytes, in whole blocks.
        Blocks {
            prefix,
            body,
            len,
            count: (len + 9).div_ceil(64),
        }
    }

    /// Block `k` (below `count`) written into `out`.
    fn fill(&self, k: usize, out: &mut [u8; 64]) {
        let start = 64 * k;
        // Most blocks lie wholly in the body: one copy of a known size (no call to memcpy).
        if let Some(whole) = start
            .checked_sub(self.prefix.len())
            .and_then(|from| self.body.get(from..from + 64))
        {
            out.copy_from_slice(whole);
            return;
        }
        let mut at = 0;
        if let Some(p) = self.prefix.get(start..) {
            let p = &p[..p.len().min(64)];
            out[..p.len()].copy_from_slice(p);
            at = p.len();
        }
        if let Some(b) = self
            .body
            .get((start + at).saturating_sub(self.prefix.len())..)
        {
            let b = &b[..b.len().min(64 - at)];
            out[at..at + b.len()].copy_from_slice(b);
            at += b.len();
        }
        if at < 64 {
            out[at..].fill(0);
            if start + at == self.len {
                out[at] = 0x80;
            }
            if k + 1 == self.count {
                out[56..].copy_from_slice(&(self.len as u64 * 8).to_be_bytes());
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod ni {
    use super::{Blocks, Message};
    use std::arch::x86_64::*;

    /// Whether this CPU has the SHA extensions and the SSE levels the kernel is compiled
    /// for (it uses SSE2 and SSSE3; SSE4.1 is asked too, as by the white paper's code). The
    /// answer is cached by the standard library after the first question.
    pub fn available() -> bool {
        std::is_x86_feature_detected!("sha")
            && std::is_x86_feature_detected!("sse2")
            && std::is_x86_feature_detected!("ssse3")
            && std::is_x86_feature_detected!("sse4.1")
    }

    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    const H0: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];

    /// A state as the SHA instructions keep it: words A, B, E, F and C, D, G, H.
    #[derive(Clone, Copy)]
    struct State {
        abef: __m128i,
        cdgh: __m128i,
    }

    /// Reverses the bytes of each 32-bit word: SHA-256's words are big-endian.
    #[target_feature(enable = "sse2")]
    fn byte_swap() -> __m128i {
        _mm_set_epi64x(0x0c0d0e0f08090a0b, 0x0405060700010203)
    }

    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn load(bytes: &[u8; 16]) -> __m128i {
        // SAFETY: `bytes` is 16 readable bytes; the load takes any alignment.
        let v = unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) };
        _mm_shuffle_epi8(v, byte_swap())
    }

    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn initial() -> State {
        let [a, b, c, d, e, f, g, h] = H0.map(|w| w as i32);
        State {
            abef: _mm_set_epi32(a, b, e, f),
            cdgh: _mm_set_epi32(c, d, g, h),
        }
    }

    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn digest(s: State) -> [u8; 32] {
        let mut words = [[0u32; 4]; 2];
        // SAFETY: each store writes the 16 bytes of a [u32; 4]; any alignment.
        unsafe {
            _mm_storeu_si128(words[0].as_mut_ptr().cast(), s.abef);
            _mm_storeu_si128(words[1].as_mut_ptr().cast(), s.cdgh);
        }
        // Lanes from the lowest: F, E, B, A and H, G, D, C.
        let [[f, e, b, a], [h, g, d, c]] = words;
        let mut out = [0u8; 32];
        for (chunk, w) in out.chunks_exact_mut(4).zip([a, b, c, d, e, f, g, h]) {
            chunk.copy_from_slice(&w.to_be_bytes());
        }
        out
    }

    /// One block into each state, the two streams' rounds interleaved (`N` = 1 or 2).
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn compress<const N: usize>(states: &mut [State; N], blocks: [&[u8; 64]; N]) {
        let saved = *states;
        let mut w = blocks.map(|b| {
            let quarter =
                |i: usize| -> &[u8; 16] { b[16 * i..16 * i + 16].try_into().expect("16 bytes") };
            [
                load(quarter(0)),
                load(quarter(1)),
                load(quarter(2)),
                load(quarter(3)),
            ]
        });
        // Sixteen groups of four rounds, written out: with `g` a constant, the schedule's
        // words stay in registers (a loop over `g` indexes them in memory, and the two
        // streams are then no faster than one).
        macro_rules! group {
            ($g:literal) => {
                let k = _mm_set_epi32(
                    K[4 * $g + 3] as i32,
                    K[4 * $g + 2] as i32,
                    K[4 * $g + 1] as i32,
                    K[4 * $g] as i32,
                );
                for (s, w) in states.iter_mut().zip(w.iter_mut()) {
                    if $g >= 4 {
                        // The schedule's next four words, in the place of the four 16 back.
                        let t = _mm_sha256msg1_epu32(w[$g % 4], w[($g + 1) % 4]);
                        let t =
                            _mm_add_epi32(t, _mm_alignr_epi8(w[($g + 3) % 4], w[($g + 2) % 4], 4));
                        w[$g % 4] = _mm_sha256msg2_epu32(t, w[($g + 3) % 4]);
                    }
                    let m = _mm_add_epi32(w[$g % 4], k);
                    s.cdgh = _mm_sha256rnds2_epu32(s.cdgh, s.abef, m);
                    s.abef = _mm_sha256rnds2_epu32(s.abef, s.cdgh, _mm_shuffle_epi32(m, 0x0E));
                }
            };
        }
        group!(0);
        group!(1);
        group!(2);
        group!(3);
        group!(4);
        group!(5);
        group!(6);
        group!(7);
        group!(8);
        group!(9);
        group!(10);
        group!(11);
        group!(12);
        group!(13);
        group!(14);
        group!(15);
        for (s, old) in states.iter_mut().zip(saved) {
            s.abef = _mm_add_epi32(s.abef, old.abef);
            s.cdgh = _mm_add_epi32(s.cdgh, old.cdgh);
        }
    }

    /// Both messages' blocks two at a time while both have one, then the longer's alone.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub fn pair(a: Message<'_>, b: Message<'_>) -> ([u8; 32], [u8; 32]) {
        let (a, b) = (Blocks::new(a), Blocks::new(b));
        let mut states = [initial(); 2];
        let (mut block_a, mut block_b) = ([0u8; 64], [0u8; 64]);
        let both = a.count.min(b.count);
        for k in 0..both {
            a.fill(k, &mut block_a);
            b.fill(k, &mut block_b);
            compress(&mut states, [&block_a, &block_b]);
        }
        let [mut state_a, mut state_b] = states;
        for (blocks, state) in [(&a, &mut state_a), (&b, &mut state_b)] {
            for k in both..blocks.count {
                blocks.fill(k, &mut block_a);
                let mut one = [*state];
                compress(&mut one, [&block_a]);
                *state = one[0];
            }
        }
        (digest(state_a), digest(state_b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes of `len` that differ from one length to the next.
    fn bytes(len: usize, salt: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
            .collect()
    }

    #[test]
    fn blocks_are_sha256_padding() {
        // The blocks, laid end to end, are the message, 0x80, zeros and the length in bits.
        for (prefix_len, body_len) in [
            (0, 0),
            (1, 54),
            (1, 55),
            (0, 56),
            (64, 0),
            (64, 247),
            (1, 300),
        ] {
            let (prefix, body) = (bytes(prefix_len, 1), bytes(body_len, 2));
            let blocks = Blocks::new((&prefix, &body));
            let mut laid = Vec::new();
            for k in 0..blocks.count {
                let mut out = [0xAAu8; 64];
                blocks.fill(k, &mut out);
                laid.extend_from_slice(&out);
            }
            let len = prefix_len + body_len;
            let mut want = [prefix.clone(), body.clone()].concat();
            want.push(0x80);
            while want.len() % 64 != 56 {
                want.push(0);
            }
            want.extend_from_slice(&(len as u64 * 8).to_be_bytes());
            assert_eq!(laid, want, "prefix {prefix_len}, body {body_len}");
        }
    }

    #[test]
    fn pairs_hash_as_sha2_does_for_every_length() {
        // Prefixes as verify gives them (none, a domain byte, a previous hash in hex), bodies
        // through five blocks, the two of a pair of different lengths and of the same.
        for prefix_len in [0, 1, 64] {
            for len in 0..=330 {
                let (prefix, body) = (bytes(prefix_len, 7), bytes(len, len as u8));
                let other = bytes((len * 7) % 331, 3);
                let want = (single((&prefix, &body)), single((&[], &other)));
                assert_eq!(
                    pair((&prefix, &body), (&[], &other)),
                    want,
                    "{prefix_len}+{len}"
                );
                assert_eq!(
                    pair((&[], &other), (&prefix, &body)),
                    (want.1, want.0),
                    "{prefix_len}+{len}, swapped"
                );
                assert_eq!(
                    pair((&prefix, &body), (&prefix, &body)),
                    (want.0, want.0),
                    "{prefix_len}+{len}, twice"
                );
            }
        }
        // The known answer for "abc" (FIPS 180-2), whichever way the machine hashes.
        let abc = hex::encode(pair((b"a", b"bc"), (b"", b"abc")).0);
        assert_eq!(
            abc,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn this_machine_takes_the_kernel() {
        // Where the CPU has the extensions the tests above went through the kernel, not
        // only through `sha2`; with `PIM_REQUIRE_SHA_NI` set (by `.ci/run` on such a CPU)
        // a machine without them fails here instead of passing on `sha2` alone.
        if !ni::available() {
            assert!(
                std::env::var_os("PIM_REQUIRE_SHA_NI").is_none(),
                "PIM_REQUIRE_SHA_NI is set but this CPU has no SHA extensions: the kernel is not tested"
            );
            eprintln!("no SHA extensions here: the kernel is not exercised");
            return;
        }
        // SAFETY: the features were just found.
        let got = unsafe { ni::pair((b"", b""), (&[1], b"x")) };
        assert_eq!(got, (single((b"", b"")), single((&[1], b"x"))));
    }
}
