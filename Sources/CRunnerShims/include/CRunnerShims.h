// CRunnerShims: the C that Swift cannot call or must not run after fork.
//
// The header only uses plain C types so that importing it into Swift needs no _GNU_SOURCE (the .c file is built
// with it). Every function is a thin wrapper; ProcessSupervision reaches them through System.swift only.
#pragma once

#include <stdint.h>
#include <sys/types.h>

#include "nr_watchdog.h"

#ifdef __cplusplus
extern "C" {
#endif

/// Which step of starting a child failed. The child reports (step, errno, index) in the memory it shares with the
/// suspended parent (CLONE_VM | CLONE_VFORK).
/// The values are part of nothing but this header: ProcessSupervision maps each to a SpawnStep.
typedef enum {
    NR_STEP_NONE = 0,
    // 1 was the parent's pipe2 for a report pipe, which the shared memory replaced.
    NR_STEP_STACK = 2,              // parent: mmap of the child's stack
    NR_STEP_CLONE = 3,              // parent: clone
    NR_STEP_SETSID = 4,             // child: setsid
    NR_STEP_PDEATHSIG = 5,          // child: prctl(PR_SET_PDEATHSIG)
    NR_STEP_STDIO = 6,              // child: fcntl/dup2 of stdin, stdout, stderr
    NR_STEP_CLOSE_FDS = 7,          // child: close_range (or the close loop)
    NR_STEP_CHDIR = 8,              // child: chdir
    NR_STEP_EXEC = 9,               // child: execve
    NR_STEP_OPEN_CGROUP = 10,       // parent: open(cgroup_procs_paths[index], O_WRONLY | O_CLOEXEC)
    NR_STEP_JOIN_CGROUP = 11,       // child: write "0" to cgroup_procs_paths[index]
    NR_STEP_MOUNT_PRIVATE = 12,     // child: mount(NULL, "/", NULL, MS_REC | MS_PRIVATE)
    NR_STEP_MOUNT_PROC = 13,        // child: mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    NR_STEP_SET_HOSTNAME = 14,      // child: sethostname
    NR_STEP_LOOPBACK = 15,          // child: socket + ioctl(SIOCGIFFLAGS / SIOCSIFFLAGS) bringing "lo" up
    NR_STEP_RLIMIT = 16,            // child: prlimit64 of rlimits[index]
    NR_STEP_SETGROUPS = 17,         // child: setgroups(0, NULL)
    NR_STEP_SETGID = 18,            // child: setresgid
    NR_STEP_SETUID = 19,            // child: setresuid
    NR_STEP_NO_NEW_PRIVS = 20,      // child: prctl(PR_SET_NO_NEW_PRIVS, 1)
    NR_STEP_PARENT_PIDFD = 21,      // parent: pidfd_open(getpid()) for the death check in a new PID namespace
    NR_STEP_MOUNT_SYS = 22,         // child: umount2("/sys", MNT_DETACH), then mount("sysfs", "/sys", "sysfs",
                                    //   MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    NR_STEP_CAPBSET_DROP = 23,      // child: prctl(PR_CAPBSET_READ / PR_CAPBSET_DROP) of capability `index`
    NR_STEP_CLEAR_AMBIENT = 24,     // child: prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    NR_STEP_CAPSET = 25,            // child: capset of empty effective, permitted and inheritable sets
} nr_spawn_step;

/// Resource limits a child can be given (mapped to RLIMIT_* in the .c file, so Swift needs no glibc enum).
typedef enum {
    NR_LIMIT_CPU_SECONDS = 0,       // RLIMIT_CPU
    NR_LIMIT_ADDRESS_SPACE = 1,     // RLIMIT_AS
    NR_LIMIT_OPEN_FILES = 2,        // RLIMIT_NOFILE
    NR_LIMIT_FILE_SIZE = 3,         // RLIMIT_FSIZE
    NR_LIMIT_PROCESSES = 4,         // RLIMIT_NPROC
    NR_LIMIT_CORE_SIZE = 5,         // RLIMIT_CORE
} nr_limit_kind;

/// RLIM_INFINITY for `nr_rlimit`.
#define NR_LIMIT_UNLIMITED UINT64_MAX

/// One resource limit: soft and hard values (NR_LIMIT_UNLIMITED for none).
typedef struct {
    int kind;                  // nr_limit_kind
    uint64_t soft;
    uint64_t hard;
} nr_rlimit;

/// At most this many cgroup.procs files (cgroup v1 has one hierarchy per controller, about a dozen).
#define NR_MAX_CGROUPS 16

/// Everything the child needs, prepared (allocated) by the parent before the clone.
typedef struct {
    const char *path;          // passed to execve as is (already resolved against PATH by the caller)
    char *const *argv;         // NULL-terminated
    char *const *envp;         // NULL-terminated, the complete environment
    const char *cwd;           // NULL = keep the parent's working directory
    int stdin_fd;              // becomes fd 0
    int stdout_fd;             // becomes fd 1
    int stderr_fd;             // becomes fd 2
    int die_with_parent;       // non-zero: prctl(PR_SET_PDEATHSIG, SIGKILL) + a check that the parent still lives
    int new_session;           // non-zero: setsid() (own session and process group); zero: the parent's group
    int new_namespaces;        // non-zero: CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS, own /proc and /sys
    int new_network;           // non-zero (with new_namespaces): CLONE_NEWNET, loopback brought up
    const char *hostname;      // NULL = keep; else sethostname (only with new_namespaces)
    int hostname_length;       // bytes of hostname (measured by the parent: a loop here could become strlen)
    const nr_rlimit *rlimits;  // rlimit_count entries, applied in order
    int rlimit_count;
    int set_credentials;       // non-zero: setgroups(0), setresgid(gid), setresuid(uid)
    uint32_t uid;
    uint32_t gid;
    int no_new_privs;          // non-zero: prctl(PR_SET_NO_NEW_PRIVS, 1)
    int drop_capabilities;     // non-zero: empty bounding, ambient, effective, permitted and inheritable sets
    const char *const *cgroup_procs_paths;  // cgroup_count paths of cgroup.procs files the child writes "0" into
    int cgroup_count;          // at most NR_MAX_CGROUPS
    int probe_only;            // non-zero: run every set-up step up to no_new_privs, then exit 0 instead of exec
} nr_spawn_config;

typedef struct {
    pid_t pid;                 // > 0 when started
    int pidfd;                 // close-on-exec pidfd of the child (CLONE_PIDFD), -1 on failure
    int failed_step;           // nr_spawn_step, NR_STEP_NONE on success
    int failed_errno;
    int failed_index;          // the cgroup path or rlimit entry that failed (NR_STEP_*_CGROUP, NR_STEP_RLIMIT)
} nr_spawn_result;

/// Starts a child with clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD [| CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC |
/// CLONE_NEWUTS [| CLONE_NEWNET]]) on a private stack. The parent opens the cgroup.procs files first. In the child,
/// raw system calls only, in this order: all signal dispositions to SIG_DFL; setsid(); write "0" to each cgroup.procs;
/// make "/" private, mount a new /proc, detach the host's /sys (with the mounts under it) and mount a new read-only
/// sysfs there (skipped when there is no /sys), sethostname, bring "lo" up; each rlimit; with drop_capabilities,
/// PR_CAPBSET_DROP of every capability in the bounding set (while CAP_SETPCAP is still effective: the credentials
/// change below takes it away); setgroups(0), setresgid, setresuid; with drop_capabilities, PR_CAP_AMBIENT_CLEAR_ALL
/// and capset of empty effective, permitted and inheritable sets (after every step that needs a privilege);
/// PR_SET_PDEATHSIG(SIGKILL) with the parent-still-alive check (after the credentials, which clear it; a capset to a
/// subset does not); PR_SET_NO_NEW_PRIVS; stdio from the given fds; every other fd closed (close_range, fallback
/// loop); chdir; empty signal mask; execve. With empty bounding and inheritable sets, an execve as uid 0 gains no
/// capabilities. The parent is suspended until the child has exec'd or exited, so on return the child's report (in
/// memory they share) holds the failure, if any; a child that failed before exec has been reaped.
/// Returns 0 when the child runs the new program (or, with probe_only, has passed every step and is exiting with 0),
/// -1 when it could not be started (result->failed_*).
/// Note: PR_SET_PDEATHSIG fires when the *thread* that called this exits.
int nr_spawn(const nr_spawn_config *config, nr_spawn_result *result);

/// The end of a child as reported by waitid.
typedef struct {
    int reaped;                // 1 when a child was reaped, 0 when none was ready (WNOHANG)
    pid_t pid;
    int code;                  // si_code: 1 CLD_EXITED, 2 CLD_KILLED, 3 CLD_DUMPED
    int status;                // si_status: exit status or signal number
    int64_t user_usec;         // ru_utime
    int64_t system_usec;       // ru_stime
    int64_t max_rss_kib;       // ru_maxrss
} nr_exit_info;

/// waitid(P_PIDFD, pidfd, WEXITED [| WNOHANG]) through the raw syscall, which also returns the rusage.
int nr_reap_pidfd(int pidfd, int nohang, nr_exit_info *info);

/// pidfd_send_signal(pidfd, sig, NULL, 0): signals exactly that process, even before it has a group of its own.
int nr_pidfd_send_signal(int pidfd, int sig);

/// waitid(P_ALL, 0, WEXITED | WNOHANG | WNOWAIT): 1 and *pid when a child is a zombie, 0 when none, -1 on error.
int nr_peek_zombie_child(pid_t *pid);

/// waitid(P_PID, pid, WEXITED | WNOHANG): 1 reaped, 0 not a zombie yet, -1 on error (ECHILD: not our child).
int nr_reap_pid_nohang(pid_t pid);

/// waitid(P_PGID, pgid, WEXITED | WNOHANG) until nothing is ready: how many zombies of that group were reaped.
int nr_reap_group_nohang(pid_t pgid);

/// One process as /proc/<pid>/stat shows it.
typedef struct {
    pid_t pid;
    pid_t ppid;
    pid_t pgrp;
    pid_t session;             // field 6
    char state;                // 'R', 'S', 'Z', ...: of the main thread
    int threads;               // field 20; a 'Z' process with more than one has a main thread gone, others live
    uint64_t start_time;       // field 22: clock ticks after boot; with the pid, it names one process for good
} nr_proc_entry;

/// Scans /proc once: fills up to `capacity` entries and returns how many processes it saw (more than `capacity`:
/// call again with a larger buffer), or -1 when /proc cannot be read.
int nr_proc_snapshot(nr_proc_entry *entries, int capacity);

/// Reads /proc/<pid>/stat into *entry. 0 on success, -1 (errno) otherwise.
int nr_proc_stat(pid_t pid, nr_proc_entry *entry);

/// Sends `sig` to the process `pid` only if it is still the one that started at `start_time`: pidfd_open(pid), then
/// /proc/<pid>/stat's start time compared, then pidfd_send_signal, so a recycled pid is never hit. Where the kernel
/// has no pidfd_open (ENOSYS), kill(pid) after the start-time check. 0, or -1 with errno (ESRCH: gone or recycled).
int nr_signal_process(pid_t pid, uint64_t start_time, int sig);

/// pidfd_send_signal(pidfd, sig, NULL, 0); where the kernel lacks it (ENOSYS), kill(pid, sig). 0 or -1 (errno).
int nr_pidfd_signal(int pidfd, pid_t pid, int sig);

/// Reads /proc/self/task/*/children: the direct children of the calling process (up to max). -1 on error.
int nr_list_children(pid_t *out, int max);

/// The calling process's descendants, walked down /proc/<pid>/task/*/children from it: fills up to `capacity`
/// entries and returns how many it found, capacity + 1 when there was no room for all (call again with more), or
/// -1 when /proc cannot be read. Costs what the tree has, not what the host runs. A process with 1024 children or
/// more also answers capacity + 1.
int nr_proc_descendants(nr_proc_entry *entries, int capacity);

/// The children files of the two threads of a child subreaper that can be the parent of a job's process: the
/// process's leader thread (orphans are reparented to the first of its threads that is not exiting: the leader while
/// it lives) and the thread that clones the main processes (CLONE_PARENT makes a main process's child its sibling).
/// Kept open and re-read with pread: one call each, unless a list is longer than 1 KiB. -1 for a file not open.
typedef struct {
    int leader_children_fd;    // /proc/self/task/<pid>/children
    int leader_stat_fd;        // /proc/self/task/<pid>/stat
    int own_children_fd;       // /proc/thread-self/children of the thread that called nr_children_watch_open
} nr_children_watch;

/// Opens the three files for the calling thread. 0, or -1 (errno) with every fd -1.
int nr_children_watch_open(nr_children_watch *watch);

/// Closes whatever is open and sets the fds to -1.
void nr_children_watch_close(nr_children_watch *watch);

/// The children of the leader thread, then those of the opening thread, into out (up to max): a pread of each
/// children file, then one of the leader's stat, which must show it neither dead ('Z', 'X') nor exiting
/// (PF_EXITING in its flags): as PF_EXITING is never cleared, every orphan reparented to this process until then went
/// to the leader. Returns how many pids, or -1 when that cannot be told (a read failed, the leader is exiting or
/// gone, or the pids did not fit).
int nr_children_watch_read(const nr_children_watch *watch, pid_t *out, int max);

/// prctl(PR_SET_CHILD_SUBREAPER, 1).
int nr_set_child_subreaper(void);

/// prctl(PR_GET_CHILD_SUBREAPER): 1 or 0, -1 on error.
int nr_is_child_subreaper(void);

/// prctl(PR_SET_NAME, name): names the calling thread (up to 15 bytes).
int nr_set_thread_name(const char *name);

/// The signals the spawning thread blocks while it clones (the kernel's 64-bit set): all of them, but SIGCHLD while
/// its disposition is the default (ignore). No handler can then run in the child before it resets the dispositions
/// (it has no children of its own to be sent a SIGCHLD), and an earlier job that ends during the clone is dropped on
/// arrival at the spawning thread instead of being queued for the process, which woke libdispatch's main and
/// manager threads for about one job in two at concurrency 2.
uint64_t nr_spawn_signal_mask(void);

/// Unblocks SIGCHLD in the calling thread. The kernel sends a child's SIGCHLD to the thread that cloned it, and
/// drops it there at once when that thread does not block it (its disposition is the default, ignore); blocked, it
/// is queued for the process and wakes whichever thread accepts it (libdispatch's sigsuspend on the main thread)
/// and every signalfd's epoll, once per job. 0 or an errno.
int nr_accept_child_signals(void);

/// pipe2(O_CLOEXEC), then the read end O_NONBLOCK.
int nr_output_pipe(int fds[2]);

/// fcntl(F_SETPIPE_SZ, pipe_size): 0 or -1 (errno). Capped by /proc/sys/fs/pipe-max-size for an unprivileged caller.
int nr_set_pipe_size(int fd, int pipe_size);

/// epoll_create1(EPOLL_CLOEXEC).
int nr_epoll_create(void);

/// epoll_ctl(EPOLL_CTL_ADD, fd, EPOLLIN) with `token` as the event's data (level-triggered); with `one_shot`,
/// EPOLLONESHOT: reported once, then disabled until the fd is closed (which removes it).
int nr_epoll_add(int epfd, int fd, uint64_t token, int one_shot);

/// epoll_wait: the tokens of up to `max` ready fds; timeout in milliseconds (-1 forever). Returns the count or -1.
int nr_epoll_wait(int epfd, uint64_t *tokens, int max, int timeout_ms);

/// eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK).
int nr_eventfd_create(void);

/// write(eventfd, 1): wakes a poller.
int nr_eventfd_signal(int fd);

/// read(eventfd): clears the counter.
void nr_eventfd_drain(int fd);

/// flistxattr(fd, NULL, 0): the size of the list of the file's extended attribute names (0: none), or -1 with errno.
long nr_xattr_list_size(int fd);

/// Whether the directory open at `fd` (read from its start, with getdents64 on `fd` itself: no stream, no dup)
/// holds exactly one entry besides "." and "..", named `only`, or none at all when `only` is NULL: 1 yes, 0 no,
/// 2 when it is immutable or append-only (FS_IOC_GETFLAGS on `fd` first; its entries are not read then), -1 with
/// errno when it cannot be read.
int nr_dir_holds_only(int fd, const char *only);

/// The inode flags of `fd` (FS_IOC_GETFLAGS: chattr's), or -1 with errno (ENOTTY, EOPNOTSUPP: the file system has
/// none).
int nr_inode_flags(int fd);

/// FS_IOC_SETFLAGS: 0, or -1 with errno (EPERM without CAP_LINUX_IMMUTABLE for the two below).
int nr_set_inode_flags(int fd, int flags);

/// Clears NR_FS_IMMUTABLE_FL and NR_FS_APPEND_FL on `fd`: 0 when neither was set (or the file system has no
/// flags), 1 cleared, -1 with errno when they could not be cleared.
int nr_clear_locking_flags(int fd);

/// FS_IMMUTABLE_FL and FS_APPEND_FL of <linux/fs.h> (chattr +i, +a).
#define NR_FS_IMMUTABLE_FL 0x00000010
#define NR_FS_APPEND_FL 0x00000020

#ifdef __cplusplus
}
#endif
