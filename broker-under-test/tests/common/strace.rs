//! Reading the real binary's system calls: the broker under `strace -f`, and its trace parsed
//! into completed calls. Two tests read it: one checks an ordering rule of a restart, the other
//! rebuilds every file the broker wrote from it (`power_cut`).

use std::collections::HashMap;
use std::process::Command;

/// Whether strace may trace here (ptrace can be forbidden in a container).
pub fn strace_works() -> bool {
    Command::new("strace")
        .args(["-qq", "-o", "/dev/null", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

/// One completed system call of the trace: a call that strace split across threads
/// (`<unfinished ...>`, then `<... resumed>`) is joined.
pub struct Call {
    /// Seconds since the epoch when strace saw the call return (`-ttt`), if it stamped it.
    /// The traced thread is stopped while strace stamps, so everything the call made possible
    /// (a response written after an fsync) happened after this instant.
    pub stamp: Option<f64>,
    pub name: String,
    /// The call as printed, `name(args) = result`.
    pub text: String,
    /// The result's leading number (`7` of `= 7</path>`, `-1` of `= -1 ENOENT (...)`).
    pub result: Option<i64>,
}

impl Call {
    pub fn ok(&self) -> bool {
        self.result == Some(0)
    }

    /// The arguments, split at the commas between them (not inside strings, arrays or
    /// structures).
    pub fn args(&self) -> Vec<&str> {
        let open = self.name.len() + 1;
        let close = self.text.rfind(") = ").unwrap_or(self.text.len());
        split_top_level(&self.text[open.min(close)..close])
    }
}

/// The completed calls of an `strace -f` trace (optionally with `-ttt` stamps), in the order
/// they returned. Signal and exit lines are skipped.
pub fn calls(trace: &str) -> Vec<Call> {
    let mut unfinished: HashMap<String, String> = HashMap::new();
    let mut out = Vec::new();
    for line in trace.lines() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let mut rest = rest.trim_start();
        let mut stamp = None;
        if let Some((first, after)) = rest.split_once(' ') {
            if first.contains('.') && first.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                stamp = first.parse::<f64>().ok();
                rest = after;
            }
        }
        if let Some(start) = rest.strip_suffix(" <unfinished ...>") {
            unfinished.insert(pid.to_owned(), start.to_owned());
            continue;
        }
        let text = match rest.strip_prefix("<... ") {
            Some(resumed) => {
                let Some(start) = unfinished.remove(pid) else {
                    continue;
                };
                let tail = resumed.split_once(" resumed>").map_or("", |(_, t)| t);
                format!("{start}{tail}")
            }
            None => rest.to_owned(),
        };
        let Some((name, _)) = text.split_once('(') else {
            continue;
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue;
        }
        let result = text.rsplit_once(" = ").and_then(|(_, r)| {
            let digits: String = r
                .chars()
                .enumerate()
                .take_while(|&(i, c)| c.is_ascii_digit() || (i == 0 && c == '-'))
                .map(|(_, c)| c)
                .collect();
            digits.parse().ok()
        });
        out.push(Call {
            stamp,
            name: name.to_owned(),
            text,
            result,
        });
    }
    out
}

/// Splits an argument list at its top-level commas.
fn split_top_level(list: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut escaped, mut start) = (0i32, false, false, 0);
    for (i, b) in list.bytes().enumerate() {
        if quoted {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => quoted = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => quoted = true,
            b'[' | b'{' | b'(' | b'<' => depth += 1,
            b']' | b'}' | b')' | b'>' => depth -= 1,
            b',' if depth == 0 => {
                parts.push(list[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    let last = list[start..].trim();
    if !last.is_empty() {
        parts.push(last);
    }
    parts
}

/// The bytes of a string as strace prints it (`"..."`, with `\xHH`, octal and C escapes; a
/// trailing `...` means strace cut it, which the caller must not allow: `-s` sets the limit).
pub fn unquote(printed: &str) -> Option<Vec<u8>> {
    let inner = printed.strip_prefix('"')?;
    let inner = inner.strip_suffix('"')?;
    Some(unescape(inner))
}

/// Undoes strace's escapes (`\xHH`, `\NNN`, `\n` and the like).
pub fn unescape(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() / 4 + 1);
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' || i + 1 == bytes.len() {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let c = bytes[i + 1];
        i += 2;
        match c {
            b'x' => {
                let hex = std::str::from_utf8(&bytes[i..(i + 2).min(bytes.len())]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                i += 2;
            }
            b'0'..=b'7' => {
                let mut value = u32::from(c - b'0');
                for _ in 0..2 {
                    match bytes.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(value as u8);
            }
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'v' => out.push(0x0b),
            b'f' => out.push(0x0c),
            other => out.push(other),
        }
    }
    out
}

/// The path strace `-y` printed after a descriptor (`7</data/x>`), if there is one.
pub fn fd_path(arg: &str) -> Option<String> {
    let start = arg.find('<')? + 1;
    let end = arg.rfind('>')?;
    (start <= end).then(|| String::from_utf8_lossy(&unescape(&arg[start..end])).into_owned())
}

/// The descriptor number at the start of an argument (`7` of `7</data/x>`).
pub fn fd_number(arg: &str) -> Option<i64> {
    let digits: String = arg.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}
