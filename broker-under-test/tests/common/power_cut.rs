//! What a power cut may leave of the files a broker wrote, in the manner of ALICE and
//! CrashMonkey: every write, truncate, fsync, rename, unlink and directory creation the real
//! binary made under its data directory is read from its strace trace, in the order the calls
//! returned, and a crash state is built from a prefix of them under POSIX rules for a journaling
//! file system in ordered mode:
//!
//! - a file's data and size are durable up to its last completed fsync or fdatasync; each later
//!   write may be lost whole, kept, or torn at 4 KiB page boundaries (any subset of its pages),
//!   independently of the others (so writes are reordered), and each later truncate may be lost;
//! - a name (create, rename, unlink, mkdir, rmdir) is durable once its directory was fsynced
//!   after it; later name changes of one directory survive as a prefix (the journal commits them
//!   in order), each directory on its own;
//! - a file is reachable only through a surviving name, in a directory that survived.
//!
//! Strace is the recording layer: it sits under everything the binary writes (the WAL,
//! segments, indexes, the offset log, the small files replaced atomically, directories), needs
//! no seam in the broker's code, and records a file the broker starts writing tomorrow without
//! anyone adding it here.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::strace::{self, fd_number, fd_path, Call};
use super::Rng;

/// The page a torn write keeps or loses as a whole.
const PAGE_BYTES: u64 = 4096;

/// The system calls the recording needs (`-e trace=`).
pub const SYSCALLS: &str =
    "trace=open,openat,creat,dup,dup2,dup3,fcntl,write,pwrite64,writev,pwritev,pwritev2,\
ftruncate,truncate,fallocate,fsync,fdatasync,rename,renameat,renameat2,unlink,unlinkat,mkdir,\
mkdirat,rmdir,link,linkat";

/// Strace's options for a recording: follow threads, stamp each call, print every byte
/// written (in hex, never cut short), and the path behind each descriptor.
pub fn strace_args(trace: &Path) -> Vec<String> {
    [
        "-f", "-qq", "-ttt", "-y", "-xx", "-s", "67108864", "-e", SYSCALLS, "-o",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([trace.display().to_string()])
    .collect()
}

/// A change to a directory's names; the journal keeps a prefix of each directory's changes.
#[derive(Clone, Debug)]
enum NameOp {
    Mkdir(PathBuf),
    Link { path: PathBuf, inode: usize },
    Rename { from: PathBuf, to: PathBuf },
    Unlink(PathBuf),
    Rmdir(PathBuf),
}

impl NameOp {
    /// The directory whose entries it changes (a rename: the target's).
    fn dir(&self) -> PathBuf {
        let path = match self {
            NameOp::Mkdir(p) | NameOp::Unlink(p) | NameOp::Rmdir(p) => p,
            NameOp::Link { path, .. } => path,
            NameOp::Rename { to, .. } => to,
        };
        path.parent().unwrap_or(Path::new("")).to_path_buf()
    }
}

#[derive(Clone, Debug)]
enum Change {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Clone, Debug)]
enum Op {
    Name(NameOp),
    Content { inode: usize, change: Change },
    SyncFile { inode: usize },
    SyncDir { dir: PathBuf },
}

/// One operation and when strace saw its call return.
#[derive(Clone, Debug)]
struct Event {
    stamp: f64,
    op: Op,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Node {
    Dir,
    File(usize),
}

/// What a descriptor the broker opened under the data directory refers to.
#[derive(Clone, Debug)]
enum Open {
    Dir(PathBuf),
    File {
        inode: usize,
        append: bool,
        position: u64,
    },
}

/// Every file-system change a broker made under `root`, from one or more traces (one per
/// process that used the directory, in order).
pub struct Recording {
    root: PathBuf,
    events: Vec<Event>,
    /// The names as the running broker saw them (no crash), to resolve opens.
    names: BTreeMap<PathBuf, Node>,
    sizes: Vec<u64>,
}

/// How a crash state treats what was not yet durable.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Survival {
    /// Only what was synced (the harshest cut).
    Synced,
    /// Everything written (what kill -9 leaves).
    Written,
    /// A random mix: per directory a prefix of its name changes, per write kept, lost or torn.
    Mixed,
}

/// One crash state: the directories and files a restart finds.
pub struct Image {
    dirs: Vec<PathBuf>,
    files: Vec<(PathBuf, Vec<u8>)>,
}

impl Image {
    /// Writes the state under `dir` (which must not exist).
    pub fn materialize(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for d in &self.dirs {
            std::fs::create_dir_all(dir.join(d))?;
        }
        for (path, bytes) in &self.files {
            std::fs::write(dir.join(path), bytes)?;
        }
        Ok(())
    }

    pub fn paths(&self) -> Vec<&Path> {
        self.dirs
            .iter()
            .chain(self.files.iter().map(|(p, _)| p))
            .map(PathBuf::as_path)
            .collect()
    }

    pub fn files(&self) -> usize {
        self.files.len()
    }
}

impl Recording {
    /// An empty recording of the (existing, empty) directory `root`.
    pub fn new(root: &Path) -> Self {
        let mut names = BTreeMap::new();
        names.insert(PathBuf::new(), Node::Dir);
        Self {
            root: root.canonicalize().expect("data dir exists"),
            events: Vec::new(),
            names,
            sizes: Vec::new(),
        }
    }

    /// Operations recorded so far.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// When the operation `k` (0-based) returned.
    pub fn stamp(&self, k: usize) -> f64 {
        self.events[k].stamp
    }

    /// Whether operation `k` is a sync or a name change (the points where what a cut may
    /// leave changes most).
    pub fn is_barrier(&self, k: usize) -> bool {
        !matches!(self.events[k].op, Op::Content { .. })
    }

    /// Adds one process's trace (`strace_args`). Descriptors are per process.
    pub fn add_trace(&mut self, trace: &str) {
        let mut fds: HashMap<i64, Open> = HashMap::new();
        for call in strace::calls(trace) {
            if call.result.is_none_or(|r| r < 0) {
                continue;
            }
            let stamp = call.stamp.expect("the recording needs -ttt stamps");
            for op in self.interpret(&call, &mut fds) {
                self.events.push(Event { stamp, op });
            }
        }
    }

    /// `path` relative to the data directory, if it is under it.
    fn relative(&self, dirfd: Option<&str>, path: &[u8]) -> Option<PathBuf> {
        let path = PathBuf::from(String::from_utf8_lossy(path).into_owned());
        let absolute = if path.is_absolute() {
            path
        } else {
            PathBuf::from(fd_path(dirfd?)?).join(path)
        };
        let absolute = absolute.to_string_lossy().replace(" (deleted)", "");
        Path::new(&absolute)
            .strip_prefix(&self.root)
            .ok()
            .map(Path::to_path_buf)
    }

    fn interpret(&mut self, call: &Call, fds: &mut HashMap<i64, Open>) -> Vec<Op> {
        let args = call.args();
        let arg = |i: usize| args.get(i).copied().unwrap_or("");
        let string = |i: usize| strace::unquote(arg(i)).unwrap_or_default();
        let number = |i: usize| arg(i).parse::<u64>().unwrap_or(0);
        let result = call.result.unwrap_or(0);
        match call.name.as_str() {
            "openat" | "open" | "creat" => {
                let (dirfd, path, flags) = match call.name.as_str() {
                    "openat" => (Some(arg(0)), string(1), arg(2)),
                    "open" => (None, string(0), arg(1)),
                    _ => (None, string(0), "O_CREAT|O_WRONLY|O_TRUNC"),
                };
                let Some(path) = self.relative(dirfd, &path) else {
                    return vec![];
                };
                self.open(path, flags, result, fds)
            }
            // A duplicate shares the open file (`File::try_clone`); a shared position only
            // matters for `write` without an offset on a file not opened for appending.
            "dup" | "dup2" | "dup3" | "fcntl" => {
                let duplicates = call.name != "fcntl" || arg(1).starts_with("F_DUPFD");
                let original = fd_number(arg(0)).and_then(|fd| fds.get(&fd).cloned());
                if let (true, Some(original)) = (duplicates, original) {
                    fds.insert(result, original);
                }
                vec![]
            }
            "write" | "pwrite64" | "writev" | "pwritev" | "pwritev2" => {
                let vectored = call.name.contains('v');
                let mut data = if vectored {
                    iov_bytes(arg(1))
                } else {
                    string(1)
                };
                assert!(
                    data.len() as i64 >= result,
                    "strace cut a write short: raise -s ({})",
                    call.name
                );
                data.truncate(result as usize);
                let explicit = call.name.starts_with('p').then(|| number(3));
                let sizes = &mut self.sizes;
                let Some(Open::File {
                    inode,
                    append,
                    position,
                }) = opened(&self.root, arg(0), fds)
                else {
                    return vec![];
                };
                let offset = match explicit {
                    Some(offset) => offset,
                    None if *append => sizes[*inode],
                    None => *position,
                };
                if explicit.is_none() {
                    *position = offset + data.len() as u64;
                }
                let inode = *inode;
                sizes[inode] = sizes[inode].max(offset + data.len() as u64);
                vec![Op::Content {
                    inode,
                    change: Change::Write { offset, data },
                }]
            }
            "ftruncate" | "fallocate" => {
                let Some(Open::File { inode, .. }) = opened(&self.root, arg(0), fds) else {
                    return vec![];
                };
                let inode = *inode;
                let len = if call.name == "ftruncate" {
                    number(1)
                } else if arg(1) == "0" {
                    // Mode 0 allocates and extends the size; the blocks read as zeros.
                    self.sizes[inode].max(number(2) + number(3))
                } else {
                    panic!("the model does not know fallocate mode {}", arg(1))
                };
                self.sizes[inode] = len;
                vec![Op::Content {
                    inode,
                    change: Change::SetLen(len),
                }]
            }
            "truncate" => {
                let Some(path) = self.relative(None, &string(0)) else {
                    return vec![];
                };
                let Some(&Node::File(inode)) = self.names.get(&path) else {
                    return vec![];
                };
                self.sizes[inode] = number(1);
                vec![Op::Content {
                    inode,
                    change: Change::SetLen(number(1)),
                }]
            }
            "fsync" | "fdatasync" => match opened(&self.root, arg(0), fds) {
                Some(Open::File { inode, .. }) => vec![Op::SyncFile { inode: *inode }],
                Some(Open::Dir(dir)) => vec![Op::SyncDir { dir: dir.clone() }],
                None => vec![],
            },
            "rename" | "renameat" | "renameat2" => {
                let (from, to) = if call.name == "rename" {
                    (
                        self.relative(None, &string(0)),
                        self.relative(None, &string(1)),
                    )
                } else {
                    (
                        self.relative(Some(arg(0)), &string(1)),
                        self.relative(Some(arg(2)), &string(3)),
                    )
                };
                match (from, to) {
                    (Some(from), Some(to)) => {
                        assert_eq!(
                            from.parent(),
                            to.parent(),
                            "the model keeps renames within one directory"
                        );
                        rename_in(&mut self.names, &from, &to);
                        vec![Op::Name(NameOp::Rename { from, to })]
                    }
                    (None, None) => vec![],
                    _ => panic!("a rename into or out of the data directory: {}", call.text),
                }
            }
            "unlink" | "unlinkat" | "rmdir" => {
                let (path, dir) = match call.name.as_str() {
                    "unlinkat" => (
                        self.relative(Some(arg(0)), &string(1)),
                        arg(2).contains("AT_REMOVEDIR"),
                    ),
                    name => (self.relative(None, &string(0)), name == "rmdir"),
                };
                let Some(path) = path else { return vec![] };
                remove_in(&mut self.names, &path);
                vec![Op::Name(if dir {
                    NameOp::Rmdir(path)
                } else {
                    NameOp::Unlink(path)
                })]
            }
            "mkdir" | "mkdirat" => {
                let path = if call.name == "mkdir" {
                    self.relative(None, &string(0))
                } else {
                    self.relative(Some(arg(0)), &string(1))
                };
                let Some(path) = path else { return vec![] };
                self.names.insert(path.clone(), Node::Dir);
                vec![Op::Name(NameOp::Mkdir(path))]
            }
            "link" | "linkat" => {
                let under_root = args
                    .iter()
                    .filter_map(|a| strace::unquote(a))
                    .any(|p| Path::new(&*String::from_utf8_lossy(&p)).starts_with(&self.root));
                assert!(
                    !under_root,
                    "the model does not know hard links: {}",
                    call.text
                );
                vec![]
            }
            _ => vec![],
        }
    }

    fn open(
        &mut self,
        path: PathBuf,
        flags: &str,
        fd: i64,
        fds: &mut HashMap<i64, Open>,
    ) -> Vec<Op> {
        let mut ops = Vec::new();
        let node = match self.names.get(&path).copied() {
            Some(node) => node,
            None if flags.contains("O_CREAT") => {
                let inode = self.sizes.len();
                self.sizes.push(0);
                self.names.insert(path.clone(), Node::File(inode));
                ops.push(Op::Name(NameOp::Link {
                    path: path.clone(),
                    inode,
                }));
                Node::File(inode)
            }
            // Opened before the recording began, or a directory this model did not see made.
            None if flags.contains("O_DIRECTORY") => Node::Dir,
            None => panic!(
                "{} opened but never created in the recording",
                path.display()
            ),
        };
        match node {
            Node::Dir => {
                fds.insert(fd, Open::Dir(path));
            }
            Node::File(inode) => {
                if flags.contains("O_TRUNC") && self.sizes[inode] > 0 {
                    self.sizes[inode] = 0;
                    ops.push(Op::Content {
                        inode,
                        change: Change::SetLen(0),
                    });
                }
                fds.insert(
                    fd,
                    Open::File {
                        inode,
                        append: flags.contains("O_APPEND"),
                        position: 0,
                    },
                );
            }
        }
        ops
    }

    /// The state a power cut leaves after the first `k` operations returned.
    pub fn crash_state(&self, k: usize, survival: Survival, rng: &mut Rng) -> Image {
        let events = &self.events[..k];
        // What the syncs among them made durable: per directory, how many of its name changes;
        // per file, how many of its content changes.
        let mut names_per_dir: BTreeMap<PathBuf, usize> = BTreeMap::new();
        let mut names_synced: BTreeMap<PathBuf, usize> = BTreeMap::new();
        let mut changes: Vec<Vec<&Change>> = vec![Vec::new(); self.sizes.len()];
        let mut changes_synced = vec![0usize; self.sizes.len()];
        for event in events {
            match &event.op {
                Op::Name(op) => *names_per_dir.entry(op.dir()).or_default() += 1,
                Op::Content { inode, change } => changes[*inode].push(change),
                Op::SyncFile { inode } => changes_synced[*inode] = changes[*inode].len(),
                Op::SyncDir { dir } => {
                    let made = names_per_dir.get(dir).copied().unwrap_or(0);
                    names_synced.insert(dir.clone(), made);
                }
            }
        }
        let kept_per_dir: BTreeMap<PathBuf, usize> = names_per_dir
            .iter()
            .map(|(dir, &made)| {
                let synced = names_synced.get(dir).copied().unwrap_or(0);
                let kept = match survival {
                    Survival::Synced => synced,
                    Survival::Written => made,
                    Survival::Mixed => synced + rng.below((made - synced + 1) as u64) as usize,
                };
                (dir.clone(), kept)
            })
            .collect();

        let mut names: BTreeMap<PathBuf, Node> = BTreeMap::new();
        names.insert(PathBuf::new(), Node::Dir);
        let mut seen_per_dir: BTreeMap<PathBuf, usize> = BTreeMap::new();
        for event in events {
            let Op::Name(op) = &event.op else { continue };
            let dir = op.dir();
            let seen = seen_per_dir.entry(dir.clone()).or_default();
            *seen += 1;
            if *seen > kept_per_dir[&dir] || !names.contains_key(&dir) {
                continue;
            }
            match op {
                NameOp::Mkdir(path) => {
                    names.insert(path.clone(), Node::Dir);
                }
                NameOp::Link { path, inode } => {
                    names.insert(path.clone(), Node::File(*inode));
                }
                NameOp::Rename { from, to } => rename_in(&mut names, from, to),
                NameOp::Unlink(path) | NameOp::Rmdir(path) => remove_in(&mut names, path),
            }
        }

        let mut dirs = Vec::new();
        let mut files = Vec::new();
        for (path, node) in names {
            match node {
                Node::Dir => dirs.push(path),
                Node::File(inode) => {
                    let content =
                        content_after(&changes[inode], changes_synced[inode], survival, rng);
                    files.push((path, content));
                }
            }
        }
        Image { dirs, files }
    }
}

/// A file's bytes: its synced changes, then each later one kept, lost or torn.
fn content_after(changes: &[&Change], synced: usize, survival: Survival, rng: &mut Rng) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (i, change) in changes.iter().enumerate() {
        let pending = i >= synced;
        match change {
            Change::SetLen(len) => {
                let kept = !pending
                    || match survival {
                        Survival::Synced => false,
                        Survival::Written => true,
                        Survival::Mixed => rng.below(2) == 0,
                    };
                if kept {
                    bytes.resize(*len as usize, 0);
                }
            }
            Change::Write { offset, data } => {
                let mode = match (pending, survival) {
                    (false, _) | (true, Survival::Written) => 0,
                    (true, Survival::Synced) => 1,
                    (true, Survival::Mixed) => rng.below(3),
                };
                let mut start = *offset;
                let end = offset + data.len() as u64;
                while start < end {
                    let page_end = ((start / PAGE_BYTES) + 1) * PAGE_BYTES;
                    let piece_end = page_end.min(end);
                    // 0: the write is kept whole; 1: lost whole; 2: torn, page by page.
                    let kept = mode == 0 || (mode == 2 && rng.below(2) == 0);
                    if kept {
                        if bytes.len() < piece_end as usize {
                            bytes.resize(piece_end as usize, 0);
                        }
                        let from = (start - offset) as usize;
                        let to = (piece_end - offset) as usize;
                        bytes[start as usize..piece_end as usize].copy_from_slice(&data[from..to]);
                    }
                    start = piece_end;
                }
            }
        }
    }
    bytes
}

/// What a descriptor argument refers to, if it is a file or directory under `root`.
///
/// Closes are not followed: calls are in the order they returned, so a close of descriptor 17
/// by one thread may return after another thread's open got 17 again. A descriptor keeps what
/// it was last opened (or duplicated) as, and strace's `-y` path tells a file under the data
/// directory from a socket that got the number since.
fn opened<'a>(root: &Path, arg: &str, fds: &'a mut HashMap<i64, Open>) -> Option<&'a mut Open> {
    let under_root = fd_path(arg).is_some_and(|p| Path::new(&p).starts_with(root));
    if !under_root {
        return None;
    }
    fds.get_mut(&fd_number(arg)?)
}

/// Moves a name (and, for a directory, everything under it).
fn rename_in(names: &mut BTreeMap<PathBuf, Node>, from: &Path, to: &Path) {
    let moved: Vec<(PathBuf, Node)> = names
        .iter()
        .filter(|(p, _)| p.starts_with(from))
        .map(|(p, n)| (p.clone(), *n))
        .collect();
    if moved.is_empty() {
        return;
    }
    remove_in(names, to);
    for (path, node) in moved {
        names.remove(&path);
        let rest = path.strip_prefix(from).expect("filtered");
        // `join("")` would add a trailing slash.
        let moved_to = if rest.as_os_str().is_empty() {
            to.to_path_buf()
        } else {
            to.join(rest)
        };
        names.insert(moved_to, node);
    }
}

/// Removes a name (and, for a directory, everything under it).
fn remove_in(names: &mut BTreeMap<PathBuf, Node>, path: &Path) {
    names.retain(|p, _| !p.starts_with(path));
}

/// The bytes of a `writev` array as strace prints it: `[{iov_base="...", iov_len=N}, ...]`.
fn iov_bytes(array: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = array;
    while let Some(at) = rest.find("iov_base=\"") {
        let start = at + "iov_base=".len();
        let body = &rest[start + 1..];
        let end = body
            .find('"')
            .expect("a closed string (hex escapes hold no quote)");
        out.extend(strace::unescape(&body[..end]));
        rest = &body[end + 1..];
    }
    out
}
