// Built with _GNU_SOURCE (Package.swift). See include/CRunnerShims.h for the contract of each function.
#include <sys/xattr.h>
#include "CRunnerShims.h"
#include "nr_kernel.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef F_SETPIPE_SZ
#define F_SETPIPE_SZ 1031
#endif
#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#endif
#ifndef PR_CAP_AMBIENT_CLEAR_ALL
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif

// ---------------------------------------------------------------------------------------------------------------
// Spawning

typedef struct {
    const nr_spawn_config *config;
    // Written by the child only, read by the parent once it resumes (CLONE_VM | CLONE_VFORK: the child has exec'd
    // or exited by then): the failed step, its errno and index; step 0 while nothing failed.
    volatile int32_t failure[3];
    pid_t parent_pid;
    int parent_pidfd;                 // -1, or a pidfd of the parent: the death check inside a new PID namespace
    int cgroup_fds[NR_MAX_CGROUPS];   // opened by the parent: the child may no longer see the paths (new mount ns)
} nr_child_args;

// The child calls nothing but syscall(): its PLT entry is resolved by the parent before the clone (the
// rt_sigprocmask below), as is errno's __errno_location. A first call through an unresolved PLT entry would run
// the dynamic linker's lazy binding in the child, on memory it shares with the parent. For the same reason the child
// never zero-fills a struct (the compiler may turn that into a call to memset): it sets each field it uses.
//
// Set-user/group-ID changes go through raw syscalls too: glibc's setresuid() & co. would broadcast the change to
// every thread of the process they believe they run in, i.e. to the parent's threads.

// Child only: tells the parent which step failed (and for which entry), in the memory they share, then exits.
__attribute__((noreturn)) static void nr_child_fail(volatile int32_t *report, int step, int err, int index) {
    report[1] = err;
    report[2] = index;
    report[0] = step;
    syscall(SYS_exit_group, 127);
    __builtin_unreachable();
}

static int nr_rlimit_resource(int kind) {
    switch (kind) {
    case NR_LIMIT_CPU_SECONDS: return RLIMIT_CPU;
    case NR_LIMIT_ADDRESS_SPACE: return RLIMIT_AS;
    case NR_LIMIT_OPEN_FILES: return RLIMIT_NOFILE;
    case NR_LIMIT_FILE_SIZE: return RLIMIT_FSIZE;
    case NR_LIMIT_PROCESSES: return RLIMIT_NPROC;
    case NR_LIMIT_CORE_SIZE: return RLIMIT_CORE;
    default: return -1;
    }
}

// Child only: the new network namespace has "lo", down. Bring it up (which also gives it 127.0.0.1 and ::1).
static int nr_child_loopback_up(void) {
    int sock = (int)syscall(SYS_socket, AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0) {
        return -1;
    }
    // Only the name is read by SIOCGIFFLAGS (up to its NUL); the kernel fills ifr_flags.
    struct ifreq request;
    request.ifr_name[0] = 'l';
    request.ifr_name[1] = 'o';
    request.ifr_name[2] = '\0';
    int rc = (int)syscall(SYS_ioctl, sock, SIOCGIFFLAGS, &request);
    if (rc == 0) {
        request.ifr_flags |= IFF_UP;
        rc = (int)syscall(SYS_ioctl, sock, SIOCSIFFLAGS, &request);
    }
    int saved = errno;
    syscall(SYS_close, sock);
    errno = saved;
    return rc;
}

// Child only: empties the capability bounding set, so that no execve can ever grant a capability again (an execve
// as uid 0 gains the bounding set, a file's capabilities are masked by it). PR_CAPBSET_DROP needs CAP_SETPCAP in the
// effective set, so this runs before the credentials change (which empties it) and before capset. A capability already
// out of the set is not dropped again: a runner without CAP_SETPCAP whose bounding set is empty passes. PR_CAPBSET_READ
// fails with EINVAL above the kernel's last capability: the end of the set.
static void nr_child_drop_bounding_set(volatile int32_t *report) {
    for (int cap = 0; cap < 64; cap++) {
        long present = syscall(SYS_prctl, PR_CAPBSET_READ, cap, 0, 0, 0);
        if (present < 0) {
            if (errno == EINVAL) {
                return;
            }
            nr_child_fail(report, NR_STEP_CAPBSET_DROP, errno, cap);
        }
        if (present > 0 && syscall(SYS_prctl, PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
            nr_child_fail(report, NR_STEP_CAPBSET_DROP, errno, cap);
        }
    }
}

// Child only: no ambient capabilities (EINVAL: a kernel before 4.3, which has no ambient set), then capset of empty
// effective, permitted and inheritable sets: the child keeps no capability, and with the bounding and inheritable sets
// empty its execve (even as uid 0) gains none. Dropping to a subset of the permitted set neither clears the
// parent-death signal nor changes the mm's dumpable flag (commit_creds), unlike a change of the ids.
static void nr_child_drop_capabilities(volatile int32_t *report) {
    if (syscall(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL) {
        nr_child_fail(report, NR_STEP_CLEAR_AMBIENT, errno, 0);
    }
    struct __user_cap_header_struct header;
    header.version = _LINUX_CAPABILITY_VERSION_3;
    header.pid = 0;
    // Two 32-bit words per set (capabilities 0..31 and 32..63), each field set on its own (no zero-fill: memset).
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
    data[0].effective = 0;
    data[0].permitted = 0;
    data[0].inheritable = 0;
    data[1].effective = 0;
    data[1].permitted = 0;
    data[1].inheritable = 0;
    if (syscall(SYS_capset, &header, data) < 0) {
        nr_child_fail(report, NR_STEP_CAPSET, errno, 0);
    }
}

// Child only: the parent still lives? Checked right after PR_SET_PDEATHSIG, which is lost if the parent died first.
static int nr_child_parent_alive(const nr_child_args *args) {
    if (args->parent_pidfd < 0) {
        return (pid_t)syscall(SYS_getppid) == args->parent_pid;
    }
    // In a new PID namespace getppid() is 0 whatever happens to the parent: its pidfd turns readable when it exits.
    struct pollfd watch;
    watch.fd = args->parent_pidfd;
    watch.events = POLLIN;
    watch.revents = 0;
    struct timespec now;
    now.tv_sec = 0;
    now.tv_nsec = 0;
    return syscall(SYS_ppoll, &watch, 1, &now, NULL, NR_KERNEL_SIGSET_SIZE) == 0;
}

// Runs in the child, sharing the parent's memory (CLONE_VM) while the parent thread is suspended (CLONE_VFORK).
// Raw system calls only (async-signal-safe): no allocation, no locks, no stdio. It writes nothing but its own stack,
// `failure` in its arguments (read by the parent once it resumes) and errno, which is the suspended parent thread's
// TLS slot and harmless.
static int nr_child_main(void *raw) {
    nr_child_args *args = raw;
    const nr_spawn_config *config = args->config;
    volatile int32_t *report = args->failure;

    // All signals are still blocked (the parent blocked them before clone), so no inherited handler can run here;
    // all but SIGCHLD when its disposition is the default, which runs no handler either.
    // Reset every disposition, including ignored ones and glibc's internal signals.
    nr_reset_signal_dispositions(0);

    // Own session and process group: pid == pgid == sid, so the whole job can be signalled as a group.
    if (config->new_session && syscall(SYS_setsid) < 0) {
        nr_child_fail(report, NR_STEP_SETSID, errno, 0);
    }

    // Into the job's cgroups before anything of the job runs, so that every limit counts from its first instruction.
    for (int i = 0; i < config->cgroup_count; i++) {
        if (syscall(SYS_write, args->cgroup_fds[i], "0", 1) < 0) {
            nr_child_fail(report, NR_STEP_JOIN_CGROUP, errno, i);
        }
    }

    // The namespaces came with the clone; this child is PID 1 of the new PID namespace. Make every mount private
    // first, so that nothing mounted here (the new /proc) propagates back to the host.
    if (config->new_namespaces) {
        if (syscall(SYS_mount, NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) {
            nr_child_fail(report, NR_STEP_MOUNT_PRIVATE, errno, 0);
        }
        // A /proc of the new PID namespace: the job sees its own processes only.
        if (syscall(SYS_mount, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) {
            nr_child_fail(report, NR_STEP_MOUNT_PROC, errno, 0);
        }
        // The host's kernel settings stay the host's, as container runtimes keep them: /proc/sys (a root job could
        // set kernel.core_pattern to a program the host then runs as root) and /proc/sysrq-trigger are read-only.
        for (int i = 0; i < 2; i++) {
            const char *path = i == 0 ? "/proc/sys" : "/proc/sysrq-trigger";
            if (syscall(SYS_mount, path, path, NULL, MS_BIND, NULL) < 0) {
                if (errno == ENOENT) {
                    continue;
                }
                nr_child_fail(report, NR_STEP_MOUNT_PROC, errno, 0);
            }
            if (syscall(SYS_mount, NULL, path, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                    NULL) < 0) {
                nr_child_fail(report, NR_STEP_MOUNT_PROC, errno, 0);
            }
        }
        // A sysfs of its own on /sys, read-only: it shows the job's network namespace (only "lo" when isolated) and
        // has no cgroup file system under /sys/fs/cgroup, so no cgroup.procs a job could write itself out of its
        // cgroups with. The host's /sys goes first, with every mount under it (MNT_DETACH takes the subtree; the
        // mounts are private, so the host keeps them): a sysfs of the runner's network namespace is the very
        // superblock mounted there, which the kernel will not mount on the same mount point again (EBUSY).
        // EINVAL: /sys is no mount point. ENOENT: this root has no /sys, and nothing at /sys to hide; a job without
        // CAP_SYS_ADMIN cannot mount one.
        if (syscall(SYS_umount2, "/sys", MNT_DETACH) < 0 && errno != EINVAL && errno != ENOENT) {
            nr_child_fail(report, NR_STEP_MOUNT_SYS, errno, 0);
        }
        if (syscall(SYS_mount, "sysfs", "/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0 &&
            errno != ENOENT) {
            nr_child_fail(report, NR_STEP_MOUNT_SYS, errno, 0);
        }
        if (config->hostname != NULL) {
            if (syscall(SYS_sethostname, config->hostname, (size_t)config->hostname_length) < 0) {
                nr_child_fail(report, NR_STEP_SET_HOSTNAME, errno, 0);
            }
        }
        if (config->new_network && nr_child_loopback_up() < 0) {
            nr_child_fail(report, NR_STEP_LOOPBACK, errno, 0);
        }
    }

    for (int i = 0; i < config->rlimit_count; i++) {
        struct {
            uint64_t soft;
            uint64_t hard;
        } value;  // struct rlimit64
        value.soft = config->rlimits[i].soft;
        value.hard = config->rlimits[i].hard;
        int resource = nr_rlimit_resource(config->rlimits[i].kind);
        if (resource < 0) {
            nr_child_fail(report, NR_STEP_RLIMIT, EINVAL, i);
        }
        if (syscall(SYS_prlimit64, 0, resource, &value, NULL) < 0) {
            nr_child_fail(report, NR_STEP_RLIMIT, errno, i);
        }
    }

    // Changing the effective ids marks the mm "not dumpable", and the mm is the parent's (CLONE_VM): give it back the
    // value it had afterwards, or the runner itself could no longer be ptraced or dump core.
    long dumpable = -1;
    if (config->set_credentials || config->drop_capabilities) {
        dumpable = syscall(SYS_prctl, PR_GET_DUMPABLE, 0, 0, 0, 0);
    }
    if (config->drop_capabilities) {
        nr_child_drop_bounding_set(report);
    }
    if (config->set_credentials) {
        if (syscall(SYS_setgroups, 0, NULL) < 0) {
            nr_child_fail(report, NR_STEP_SETGROUPS, errno, 0);
        }
        if (syscall(SYS_setresgid, config->gid, config->gid, config->gid) < 0) {
            nr_child_fail(report, NR_STEP_SETGID, errno, 0);
        }
        if (syscall(SYS_setresuid, config->uid, config->uid, config->uid) < 0) {
            nr_child_fail(report, NR_STEP_SETUID, errno, 0);
        }
    }
    // Last of the steps that may need a privilege (cgroups, mounts, hostname, loopback, rlimits, credentials).
    if (config->drop_capabilities) {
        nr_child_drop_capabilities(report);
    }
    if (dumpable == 0 || dumpable == 1) {
        syscall(SYS_prctl, PR_SET_DUMPABLE, dumpable, 0, 0, 0);
    }

    // After the credentials: changing them clears the parent-death signal (dropping capabilities does not).
    if (config->die_with_parent) {
        if (syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) {
            nr_child_fail(report, NR_STEP_PDEATHSIG, errno, 0);
        }
        // The parent may have died before the prctl took effect: then nobody would send the signal.
        if (!nr_child_parent_alive(args)) {
            syscall(SYS_exit_group, 127);
        }
    }

    if (config->no_new_privs && syscall(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
        nr_child_fail(report, NR_STEP_NO_NEW_PRIVS, errno, 0);
    }

    if (config->probe_only) {
        syscall(SYS_exit_group, 0);
    }

    // Lift the stdio sources above 2 so the dups below cannot clobber one another whatever numbers the parent's fds
    // have.
    int sources[3] = {config->stdin_fd, config->stdout_fd, config->stderr_fd};
    for (int i = 0; i < 3; i++) {
        if (sources[i] < 3) {
            int moved = (int)syscall(SYS_fcntl, sources[i], F_DUPFD_CLOEXEC, 3);
            if (moved < 0) {
                nr_child_fail(report, NR_STEP_STDIO, errno, 0);
            }
            sources[i] = moved;
        }
    }
    for (int i = 0; i < 3; i++) {
        // Source >= 3 and target < 3 always differ, so dup3 without flags is dup2: close-on-exec cleared.
        if (syscall(SYS_dup3, sources[i], i, 0) < 0) {
            nr_child_fail(report, NR_STEP_STDIO, errno, 0);
        }
    }
    // Every other fd goes (the cgroup and parent pidfds too): 0..2 are stdio.
    nr_close_fd_range(3U, ~0U);

    if (config->cwd != NULL && syscall(SYS_chdir, config->cwd) < 0) {
        nr_child_fail(report, NR_STEP_CHDIR, errno, 0);
    }

    uint64_t empty = 0;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &empty, NULL, NR_KERNEL_SIGSET_SIZE);

    syscall(SYS_execve, config->path, config->argv, config->envp);
    nr_child_fail(report, NR_STEP_EXEC, errno, 0);
}

uint64_t nr_spawn_signal_mask(void) {
    uint64_t mask = ~(uint64_t)0;
    struct nr_kernel_sigaction current;
    if (syscall(SYS_rt_sigaction, SIGCHLD, NULL, &current, NR_KERNEL_SIGSET_SIZE) == 0
        && current.handler == (void *)SIG_DFL) {
        mask &= ~NR_SIGNAL_BIT(SIGCHLD);
    }
    return mask;
}

static void nr_close_all(const int *fds, int count) {
    for (int i = 0; i < count; i++) {
        if (fds[i] >= 0) {
            close(fds[i]);
        }
    }
}

// The child's stack: 64 KiB (its frames are small: raw syscalls only) above a guard page. Each thread that spawns
// keeps one for its next spawn, unmapped when the thread ends: the child is done with it before the parent resumes
// (CLONE_VFORK: after its execve switched to a new mm, or its exit), and a thread runs one spawn at a time. That
// saves an mmap, an mprotect and a munmap (with its TLB shootdown) per spawn.
static size_t nr_child_stack_map_size(void) { return 64 * 1024 + (size_t)sysconf(_SC_PAGESIZE); }

static pthread_key_t nr_child_stack_key;
static int nr_child_stack_key_ready;
static pthread_once_t nr_child_stack_once = PTHREAD_ONCE_INIT;

static void nr_child_stack_release(void *map) { munmap(map, nr_child_stack_map_size()); }

static void nr_child_stack_key_create(void) {
    nr_child_stack_key_ready = pthread_key_create(&nr_child_stack_key, nr_child_stack_release) == 0;
}

// The calling thread's child stack (the base of its mapping), mapped on first use; NULL (errno) when it cannot be.
// *kept: 1 when the thread keeps it, 0 when the caller must unmap it after the clone.
static char *nr_child_stack(int *kept) {
    *kept = 0;
    pthread_once(&nr_child_stack_once, nr_child_stack_key_create);
    if (nr_child_stack_key_ready) {
        char *map = pthread_getspecific(nr_child_stack_key);
        if (map != NULL) {
            *kept = 1;
            return map;
        }
    }
    char *map = mmap(NULL, nr_child_stack_map_size(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK,
        -1, 0);
    if (map == MAP_FAILED) {
        return NULL;
    }
    mprotect(map, (size_t)sysconf(_SC_PAGESIZE), PROT_NONE);
    if (nr_child_stack_key_ready && pthread_setspecific(nr_child_stack_key, map) == 0) {
        *kept = 1;
    }
    return map;
}

static int nr_spawn_failed(nr_spawn_result *result, int step, int err, int index) {
    result->failed_step = step;
    result->failed_errno = err;
    result->failed_index = index;
    return -1;
}

int nr_spawn(const nr_spawn_config *config, nr_spawn_result *result) {
    result->pid = -1;
    result->pidfd = -1;
    result->failed_step = NR_STEP_NONE;
    result->failed_errno = 0;
    result->failed_index = 0;

    nr_child_args args;
    args.config = config;
    args.parent_pid = getpid();
    args.parent_pidfd = -1;
    if (config->cgroup_count < 0 || config->cgroup_count > NR_MAX_CGROUPS) {
        return nr_spawn_failed(result, NR_STEP_OPEN_CGROUP, EINVAL, 0);
    }
    // Opened here, before the clone: the paths are the runner's view, and a child in a new mount namespace that
    // failed half-way could not be told apart from a missing cgroup.
    for (int i = 0; i < config->cgroup_count; i++) {
        args.cgroup_fds[i] = open(config->cgroup_procs_paths[i], O_WRONLY | O_CLOEXEC);
        if (args.cgroup_fds[i] < 0) {
            int err = errno;
            nr_close_all(args.cgroup_fds, i);
            return nr_spawn_failed(result, NR_STEP_OPEN_CGROUP, err, i);
        }
    }
    if (config->new_namespaces && config->die_with_parent) {
        args.parent_pidfd = (int)syscall(SYS_pidfd_open, args.parent_pid, 0);
        if (args.parent_pidfd < 0) {
            int err = errno;
            nr_close_all(args.cgroup_fds, config->cgroup_count);
            return nr_spawn_failed(result, NR_STEP_PARENT_PIDFD, err, 0);
        }
    }

    // No pipe for the child's report: it shares our memory and we resume only once it exec'd or exited.
    args.failure[0] = 0;
    args.failure[1] = 0;
    args.failure[2] = 0;

    // A private stack for the child, with a guard page below it.
    const size_t map_size = nr_child_stack_map_size();
    int stack_kept = 0;
    char *map = nr_child_stack(&stack_kept);
    if (map == NULL) {
        int err = errno;
        nr_close_all(args.cgroup_fds, config->cgroup_count);
        nr_close_all(&args.parent_pidfd, 1);
        return nr_spawn_failed(result, NR_STEP_STACK, err, 0);
    }

    // CLONE_NEWPID combines with CLONE_VM | CLONE_VFORK | CLONE_PIDFD (it excludes only CLONE_THREAD and
    // CLONE_PARENT); CLONE_NEWNS excludes only CLONE_FS, which we do not share.
    int flags = CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD;
    if (config->new_namespaces) {
        flags |= CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS;
        if (config->new_network) {
            flags |= CLONE_NEWNET;
        }
    }

    // Block every signal but maybe SIGCHLD (nr_spawn_signal_mask) so no handler of the parent can run in the child,
    // which shares our memory, before it has reset the dispositions. The child inherits this mask. The raw syscall
    // blocks glibc's internal signals too, and resolves the PLT entries of syscall() and __errno_location before the
    // child needs them.
    uint64_t all = nr_spawn_signal_mask();
    uint64_t saved = 0;
    errno = 0;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, &saved, NR_KERNEL_SIGSET_SIZE);

    int pidfd = -1;
    pid_t pid = clone(nr_child_main, map + map_size, flags, &args, &pidfd);
    int clone_errno = errno;

    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &saved, NULL, NR_KERNEL_SIGSET_SIZE);
    if (!stack_kept) {
        munmap(map, map_size);
    }
    nr_close_all(args.cgroup_fds, config->cgroup_count);
    nr_close_all(&args.parent_pidfd, 1);

    if (pid < 0) {
        return nr_spawn_failed(result, NR_STEP_CLONE, clone_errno, 0);
    }

    // CLONE_VFORK: we resume only after the child exec'd or exited (its report, if any, written by then).
    int failed = args.failure[0] != 0;
    if (failed || config->probe_only) {
        // The child failed before exec (or was a probe) and has exited (or is exiting): reap it, blocking only for
        // that moment.
        nr_exit_info info;
        info.code = 0;
        info.status = -1;
        while (nr_reap_pidfd(pidfd, 0, &info) < 0 && errno == EINTR) {
        }
        close(pidfd);
        if (failed) {
            return nr_spawn_failed(result, args.failure[0], args.failure[1], args.failure[2]);
        }
        if (info.code != CLD_EXITED || info.status != 0) {
            // A probe that did not report a step yet did not exit 0 (killed, or the parent-death check fired).
            return nr_spawn_failed(result, NR_STEP_PDEATHSIG, ECHILD, 0);
        }
        result->pid = pid;
        return 0;
    }

    result->pid = pid;
    result->pidfd = pidfd;
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Waiting and reaping

static void nr_fill_exit_info(nr_exit_info *info, const siginfo_t *si, const struct rusage *ru) {
    info->reaped = si->si_pid != 0;
    info->pid = si->si_pid;
    info->code = si->si_code;
    info->status = si->si_status;
    info->user_usec = (int64_t)ru->ru_utime.tv_sec * 1000000 + ru->ru_utime.tv_usec;
    info->system_usec = (int64_t)ru->ru_stime.tv_sec * 1000000 + ru->ru_stime.tv_usec;
    info->max_rss_kib = ru->ru_maxrss;
}

int nr_reap_pidfd(int pidfd, int nohang, nr_exit_info *info) {
    siginfo_t si;
    struct rusage ru;
    memset(&si, 0, sizeof si);
    memset(&ru, 0, sizeof ru);
    // glibc's waitid() has no rusage argument; the system call does.
    if (syscall(SYS_waitid, P_PIDFD, pidfd, &si, WEXITED | (nohang ? WNOHANG : 0), &ru) < 0) {
        return -1;
    }
    nr_fill_exit_info(info, &si, &ru);
    return 0;
}

int nr_pidfd_send_signal(int pidfd, int sig) {
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

int nr_peek_zombie_child(pid_t *pid) {
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) < 0) {
        return errno == ECHILD ? 0 : -1;
    }
    if (si.si_pid == 0) {
        return 0;
    }
    *pid = si.si_pid;
    return 1;
}

int nr_reap_pid_nohang(pid_t pid) {
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG) < 0) {
        return -1;
    }
    return si.si_pid != 0 ? 1 : 0;
}

int nr_reap_group_nohang(pid_t pgid) {
    int reaped = 0;
    for (;;) {
        siginfo_t si;
        memset(&si, 0, sizeof si);
        if (waitid(P_PGID, (id_t)pgid, &si, WEXITED | WNOHANG) < 0) {
            if (errno == EINTR) {
                continue;
            }
            return reaped;
        }
        if (si.si_pid == 0) {
            return reaped;
        }
        reaped++;
    }
}

// Parses "pid (comm) S ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime
// priority nice threads itrealvalue starttime ..." from /proc/<pid>/stat; comm may hold spaces and parentheses.
static int nr_parse_stat(const char *path, pid_t pid, nr_proc_entry *entry) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    char buffer[1024];
    ssize_t n;
    do {
        n = read(fd, buffer, sizeof buffer - 1);
    } while (n < 0 && errno == EINTR);
    int saved = errno;
    close(fd);
    if (n <= 0) {
        errno = n < 0 ? saved : ESRCH;
        return -1;
    }
    buffer[n] = '\0';
    char *close_paren = strrchr(buffer, ')');
    int parsed_ppid = 0;
    int parsed_pgrp = 0;
    int parsed_session = 0;
    char parsed_state = 0;
    int parsed_threads = 0;
    unsigned long long parsed_start = 0;
    const char *format = " %c %d %d %d %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %d %*s %llu";
    if (close_paren == NULL || sscanf(close_paren + 1, format, &parsed_state, &parsed_ppid, &parsed_pgrp,
                                      &parsed_session, &parsed_threads, &parsed_start) != 6) {
        errno = EINVAL;
        return -1;
    }
    entry->pid = pid;
    entry->ppid = parsed_ppid;
    entry->pgrp = parsed_pgrp;
    entry->session = parsed_session;
    entry->state = parsed_state;
    entry->threads = parsed_threads;
    entry->start_time = parsed_start;
    return 0;
}

int nr_proc_stat(pid_t pid, nr_proc_entry *entry) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    return nr_parse_stat(path, pid, entry);
}

int nr_proc_snapshot(nr_proc_entry *entries, int capacity) {
    DIR *proc = opendir("/proc");
    if (proc == NULL) {
        return -1;
    }
    int seen = 0;
    struct dirent *entry;
    while ((entry = readdir(proc)) != NULL) {
        const char *name = entry->d_name;
        if (name[0] < '1' || name[0] > '9') {
            continue;
        }
        nr_proc_entry parsed;
        if (nr_proc_stat((pid_t)strtol(name, NULL, 10), &parsed) < 0) {
            continue;  // gone meanwhile
        }
        if (seen < capacity) {
            entries[seen] = parsed;
        }
        seen++;
    }
    closedir(proc);
    return seen;
}

int nr_signal_process(pid_t pid, uint64_t start_time, int sig) {
    if (pid <= 1) {
        errno = EINVAL;
        return -1;
    }
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0 && errno != ENOSYS) {
        return -1;  // ESRCH: gone
    }
    // The pidfd is fixed to one process now; if /proc/<pid> still shows our start time, it is that process.
    nr_proc_entry now;
    if (nr_proc_stat(pid, &now) < 0 || now.start_time != start_time) {
        if (pidfd >= 0) {
            close(pidfd);
        }
        errno = ESRCH;
        return -1;
    }
    int rc = pidfd >= 0 ? (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0) : kill(pid, sig);
    int saved = errno;
    if (pidfd >= 0) {
        close(pidfd);
    }
    errno = saved;
    return rc;
}

int nr_pidfd_signal(int pidfd, pid_t pid, int sig) {
    if (pidfd >= 0) {
        if (syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0) == 0) {
            return 0;
        }
        if (errno != ENOSYS) {
            return -1;
        }
    }
    return kill(pid, sig);
}

/* Reads the pids in one /proc/<pid>/task/<tid>/children file into out (up to max); returns how many, 0 when the
 * file is gone (the thread ended meanwhile). */
static int nr_read_children_file(const char *path, pid_t *out, int max) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return 0;
    }
    char buffer[4096];
    size_t used = 0;
    ssize_t n;
    while (used < sizeof buffer - 1 && (n = read(fd, buffer + used, sizeof buffer - 1 - used)) > 0) {
        used += (size_t)n;
    }
    close(fd);
    buffer[used] = '\0';
    int count = 0;
    char *cursor = buffer;
    while (count < max) {
        char *end = NULL;
        long value = strtol(cursor, &end, 10);
        if (end == cursor) {
            break;
        }
        out[count++] = (pid_t)value;
        cursor = end;
    }
    return count;
}

/* The children of `pid` from all its threads' children files, into out (up to max); -1 when its task folder cannot
 * be opened. */
static int nr_children_of(pid_t pid, pid_t *out, int max) {
    char path[64];
    if (pid == 0) {
        snprintf(path, sizeof path, "/proc/self/task");
    } else {
        snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    }
    DIR *tasks = opendir(path);
    if (tasks == NULL) {
        return -1;
    }
    int count = 0;
    struct dirent *entry;
    while ((entry = readdir(tasks)) != NULL && count < max) {
        if (entry->d_name[0] < '1' || entry->d_name[0] > '9') {
            continue;
        }
        char file[320];
        snprintf(file, sizeof file, "%s/%s/children", path, entry->d_name);
        count += nr_read_children_file(file, out + count, max - count);
    }
    closedir(tasks);
    return count;
}

int nr_list_children(pid_t *out, int max) { return nr_children_of(0, out, max); }

/* Appends the children of `pid` as entries after the first `count`; returns the new count, or -1 when the entries
 * are full. A process that ended meanwhile is skipped. */
static int nr_append_children(pid_t pid, nr_proc_entry *entries, int count, int capacity) {
    pid_t children[1024];
    int found = nr_children_of(pid, children, (int)(sizeof children / sizeof children[0]));
    if (found == (int)(sizeof children / sizeof children[0])) {
        return -1;  // maybe more than room: the caller asks again with more
    }
    for (int i = 0; i < found; i++) {
        if (count >= capacity) {
            return -1;
        }
        if (nr_proc_stat(children[i], &entries[count]) == 0) {
            count++;
        }
    }
    return count;
}

int nr_proc_descendants(nr_proc_entry *entries, int capacity) {
    DIR *self = opendir("/proc/self/task");
    if (self == NULL) {
        return -1;
    }
    closedir(self);
    int count = nr_append_children(getpid(), entries, 0, capacity);
    // The entries found so far are the queue: each one's children are appended after it.
    for (int next = 0; count >= 0 && next < count; next++) {
        count = nr_append_children(entries[next].pid, entries, count, capacity);
    }
    return count < 0 ? capacity + 1 : count;
}

// The kernel's PF_EXITING task flag (include/linux/sched.h), set at the start of do_exit and never cleared.
#define NR_PF_EXITING 0x00000004U

int nr_children_watch_open(nr_children_watch *watch) {
    char path[64];
    int pid = (int)getpid();
    snprintf(path, sizeof path, "/proc/self/task/%d/children", pid);
    watch->leader_children_fd = open(path, O_RDONLY | O_CLOEXEC);
    snprintf(path, sizeof path, "/proc/self/task/%d/stat", pid);
    watch->leader_stat_fd = open(path, O_RDONLY | O_CLOEXEC);
    watch->own_children_fd = open("/proc/thread-self/children", O_RDONLY | O_CLOEXEC);
    if (watch->leader_children_fd < 0 || watch->leader_stat_fd < 0 || watch->own_children_fd < 0) {
        int saved = errno;
        nr_children_watch_close(watch);
        errno = saved;
        return -1;
    }
    return 0;
}

void nr_children_watch_close(nr_children_watch *watch) {
    int *fds[3] = {&watch->leader_children_fd, &watch->leader_stat_fd, &watch->own_children_fd};
    for (int i = 0; i < 3; i++) {
        if (*fds[i] >= 0) {
            close(*fds[i]);
        }
        *fds[i] = -1;
    }
}

/* The whole of a seq_file from offset 0 into buffer (NUL-terminated): its length, or -1 on a failed read or when it
 * does not fit. A seq_file read stops short of the request only at the end of the file or once it has filled its
 * buffer of at least a page, so a read of less than 1024 bytes is the rest of the file: the common case is one
 * pread. */
static ssize_t nr_pread_whole(int fd, char *buffer, size_t size) {
    size_t used = 0;
    for (;;) {
        ssize_t n = pread(fd, buffer + used, size - 1 - used, (off_t)used);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            return -1;
        }
        used += (size_t)n;
        if (used >= size - 1) {
            return -1;  // maybe more than room
        }
        if (n < 1024) {
            break;
        }
    }
    buffer[used] = '\0';
    return (ssize_t)used;
}

/* Appends the pids of a children file's text to out[count..max); the new count, or -1 when they do not fit. */
static int nr_parse_pids(const char *text, pid_t *out, int count, int max) {
    const char *cursor = text;
    for (;;) {
        char *end = NULL;
        long value = strtol(cursor, &end, 10);
        if (end == cursor) {
            return count;
        }
        if (count >= max) {
            return -1;
        }
        out[count++] = (pid_t)value;
        cursor = end;
    }
}

/* Whether /proc/<pid>/task/<tid>/stat's text shows a task that is neither dead nor exiting: the state (field 3) is
 * not 'Z' or 'X' and the flags (field 9) lack PF_EXITING. */
static int nr_stat_shows_live_task(const char *text) {
    const char *cursor = strrchr(text, ')');
    if (cursor == NULL || cursor[1] != ' ') {
        return 0;
    }
    char state = cursor[2];
    if (state == '\0' || state == 'Z' || state == 'X') {
        return 0;
    }
    cursor += 3;
    for (int field = 4; field <= 9; field++) {  // ppid, pgrp, session, tty_nr, tpgid, then flags
        if (*cursor != ' ') {
            return 0;
        }
        cursor++;
        if (field == 9) {
            break;
        }
        while (*cursor != ' ' && *cursor != '\0') {
            cursor++;
        }
    }
    char *end = NULL;
    unsigned long flags = strtoul(cursor, &end, 10);
    return end != cursor && (flags & NR_PF_EXITING) == 0;
}

int nr_children_watch_read(const nr_children_watch *watch, pid_t *out, int max) {
    char buffer[16384];
    int count = 0;
    int fds[2] = {watch->leader_children_fd, watch->own_children_fd};
    for (int i = 0; i < 2; i++) {
        if (fds[i] < 0 || nr_pread_whole(fds[i], buffer, sizeof buffer) < 0) {
            return -1;
        }
        count = nr_parse_pids(buffer, out, count, max);
        if (count < 0) {
            return -1;
        }
    }
    // Read last: the leader not exiting now means it was not exiting during the reads above either.
    if (watch->leader_stat_fd < 0 || nr_pread_whole(watch->leader_stat_fd, buffer, 1024) < 0 ||
        !nr_stat_shows_live_task(buffer)) {
        return -1;
    }
    return count;
}

// ---------------------------------------------------------------------------------------------------------------
// Process attributes

int nr_set_child_subreaper(void) {
    return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
}

int nr_is_child_subreaper(void) {
    int value = 0;
    if (prctl(PR_GET_CHILD_SUBREAPER, &value, 0, 0, 0) < 0) {
        return -1;
    }
    return value != 0;
}

int nr_set_thread_name(const char *name) {
    return prctl(PR_SET_NAME, name, 0, 0, 0);
}

int nr_accept_child_signals(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    return pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

// ---------------------------------------------------------------------------------------------------------------
// Pipes, epoll, eventfd

int nr_output_pipe(int fds[2]) {
    if (pipe2(fds, O_CLOEXEC) < 0) {
        return -1;
    }
    // A new pipe's read end has no other status flag (O_RDONLY only), so no F_GETFL first. Only the read end: the
    // child's stdout must block.
    if (fcntl(fds[0], F_SETFL, O_NONBLOCK) < 0) {
        int saved = errno;
        close(fds[0]);
        close(fds[1]);
        errno = saved;
        return -1;
    }
    return 0;
}

int nr_set_pipe_size(int fd, int pipe_size) {
    return fcntl(fd, F_SETPIPE_SZ, pipe_size) < 0 ? -1 : 0;
}

int nr_epoll_create(void) {
    return epoll_create1(EPOLL_CLOEXEC);
}

int nr_epoll_add(int epfd, int fd, uint64_t token, int one_shot) {
    struct epoll_event event;
    memset(&event, 0, sizeof event);
    event.events = EPOLLIN | (one_shot ? EPOLLONESHOT : 0);
    event.data.u64 = token;
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &event);
}

int nr_epoll_wait(int epfd, uint64_t *tokens, int max, int timeout_ms) {
    struct epoll_event events[64];
    if (max > 64) {
        max = 64;
    }
    int n = epoll_wait(epfd, events, max, timeout_ms);
    for (int i = 0; i < n; i++) {
        tokens[i] = events[i].data.u64;
    }
    return n;
}

int nr_eventfd_create(void) {
    return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
}

int nr_eventfd_signal(int fd) {
    uint64_t one = 1;
    ssize_t n;
    do {
        n = write(fd, &one, sizeof one);
    } while (n < 0 && errno == EINTR);
    // EAGAIN means the counter is saturated: the poller is going to wake anyway.
    return (n < 0 && errno != EAGAIN) ? -1 : 0;
}

void nr_eventfd_drain(int fd) {
    uint64_t value;
    ssize_t n;
    do {
        n = read(fd, &value, sizeof value);
    } while (n < 0 && errno == EINTR);
}

long nr_xattr_list_size(int fd) { return (long)flistxattr(fd, NULL, 0); }

int nr_inode_flags(int fd) {
    int flags = 0;
    return ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0 ? flags : -1;
}

int nr_set_inode_flags(int fd, int flags) { return ioctl(fd, FS_IOC_SETFLAGS, &flags); }

int nr_clear_locking_flags(int fd) {
    int flags = nr_inode_flags(fd);
    if (flags < 0 || (flags & (NR_FS_IMMUTABLE_FL | NR_FS_APPEND_FL)) == 0) {
        return 0;
    }
    return nr_set_inode_flags(fd, flags & ~(NR_FS_IMMUTABLE_FL | NR_FS_APPEND_FL)) == 0 ? 1 : -1;
}

int nr_dir_holds_only(int fd, const char *only) {
    // Immutable or append-only (chattr +i, +a) is not as made: the next job could not write or delete there. One
    // ioctl on the fd already open; a file system without these flags fails it (ENOTTY, EOPNOTSUPP) and has none.
    int flags = nr_inode_flags(fd);
    if (flags > 0 && (flags & (NR_FS_IMMUTABLE_FL | NR_FS_APPEND_FL)) != 0) {
        return 2;
    }
    // struct linux_dirent64 as the kernel writes it (glibc declares no type for the raw call).
    struct entry {
        uint64_t inode;
        int64_t offset;
        unsigned short length;
        unsigned char type;
        char name[];
    };
    _Alignas(8) char buffer[2048];
    int found = 0;
    for (;;) {
        long n = syscall(SYS_getdents64, fd, buffer, sizeof buffer);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        if (n == 0) {
            return only == NULL ? found == 0 : found == 1;
        }
        for (long at = 0; at < n;) {
            const struct entry *e = (const struct entry *)(buffer + at);
            at += e->length;
            if (strcmp(e->name, ".") == 0 || strcmp(e->name, "..") == 0) {
                continue;
            }
            if (only == NULL || found > 0 || strcmp(e->name, only) != 0) {
                return 0;
            }
            found = 1;
        }
    }
}
