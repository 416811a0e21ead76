// Built with _GNU_SOURCE (Package.swift). See include/CRunnerShims.h for the contract of each function.
#include "CRunnerShims.h"
#include "nr_kernel.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef F_SETPIPE_SZ
#define F_SETPIPE_SZ 1031
#endif

// ---------------------------------------------------------------------------------------------------------------
// Spawning

typedef struct {
    const nr_spawn_config *config;
    int report_fd;
    pid_t parent_pid;
} nr_child_args;

// The child calls nothing but syscall(): its PLT entry is resolved by the parent before the clone (the
// rt_sigprocmask below), as is errno's __errno_location. A first call through an unresolved PLT entry would run
// the dynamic linker's lazy binding in the child, on memory it shares with the parent.

// Child only: tells the parent which step failed, then exits.
__attribute__((noreturn)) static void nr_child_fail(int report_fd, int step, int err) {
    int32_t message[2] = {step, err};
    while (syscall(SYS_write, report_fd, message, sizeof message) < 0 && errno == EINTR) {
    }
    syscall(SYS_exit_group, 127);
    __builtin_unreachable();
}

// Runs in the child, sharing the parent's memory (CLONE_VM) while the parent thread is suspended (CLONE_VFORK).
// Raw system calls only (async-signal-safe): no allocation, no locks, no stdio. It writes nothing but its own stack
// (and errno, which is the suspended parent thread's TLS slot and harmless).
static int nr_child_main(void *raw) {
    const nr_child_args *args = raw;
    const nr_spawn_config *config = args->config;
    int report_fd = args->report_fd;

    // All signals are still blocked (the parent blocked them before clone), so no inherited handler can run here.
    // Reset every disposition, including ignored ones and glibc's internal signals.
    nr_reset_signal_dispositions(0);

    // Own session and process group: pid == pgid == sid, so the whole job can be signalled as a group.
    if (syscall(SYS_setsid) < 0) {
        nr_child_fail(report_fd, NR_STEP_SETSID, errno);
    }

    if (config->die_with_parent) {
        if (syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) {
            nr_child_fail(report_fd, NR_STEP_PDEATHSIG, errno);
        }
        // The parent may have died before the prctl took effect: then nobody would send the signal.
        if ((pid_t)syscall(SYS_getppid) != args->parent_pid) {
            syscall(SYS_exit_group, 127);
        }
    }

    // Keep the report fd out of 0..2 (still close-on-exec), then lift the stdio sources above 2 as well so the
    // dups below cannot clobber one another whatever numbers the parent's fds have.
    if (report_fd < 3) {
        int moved = (int)syscall(SYS_fcntl, report_fd, F_DUPFD_CLOEXEC, 3);
        if (moved < 0) {
            nr_child_fail(report_fd, NR_STEP_STDIO, errno);
        }
        report_fd = moved;
    }
    int sources[3] = {config->stdin_fd, config->stdout_fd, config->stderr_fd};
    for (int i = 0; i < 3; i++) {
        if (sources[i] < 3) {
            int moved = (int)syscall(SYS_fcntl, sources[i], F_DUPFD_CLOEXEC, 3);
            if (moved < 0) {
                nr_child_fail(report_fd, NR_STEP_STDIO, errno);
            }
            sources[i] = moved;
        }
    }
    for (int i = 0; i < 3; i++) {
        // Source >= 3 and target < 3 always differ, so dup3 without flags is dup2: close-on-exec cleared.
        if (syscall(SYS_dup3, sources[i], i, 0) < 0) {
            nr_child_fail(report_fd, NR_STEP_STDIO, errno);
        }
    }
    if (report_fd != 3) {
        if (syscall(SYS_dup3, report_fd, 3, O_CLOEXEC) < 0) {
            nr_child_fail(report_fd, NR_STEP_STDIO, errno);
        }
        report_fd = 3;
    }

    // Every other fd goes: 0..2 are stdio, 3 is the close-on-exec report pipe.
    nr_close_fd_range(4U, ~0U);

    if (config->cwd != NULL && syscall(SYS_chdir, config->cwd) < 0) {
        nr_child_fail(report_fd, NR_STEP_CHDIR, errno);
    }

    uint64_t empty = 0;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &empty, NULL, NR_KERNEL_SIGSET_SIZE);

    syscall(SYS_execve, config->path, config->argv, config->envp);
    nr_child_fail(report_fd, NR_STEP_EXEC, errno);
}

int nr_spawn(const nr_spawn_config *config, nr_spawn_result *result) {
    result->pid = -1;
    result->pidfd = -1;
    result->failed_step = NR_STEP_NONE;
    result->failed_errno = 0;

    // Both ends close-on-exec: an exec in the child closes the write end; a report is 8 bytes into an empty pipe.
    int report[2];
    if (pipe2(report, O_CLOEXEC | O_NONBLOCK) < 0) {
        result->failed_step = NR_STEP_REPORT_PIPE;
        result->failed_errno = errno;
        return -1;
    }

    // A private stack for the child, with a guard page below it. The child's frames are small (raw syscalls only).
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t stack_size = 64 * 1024;
    const size_t map_size = stack_size + page;
    char *map = mmap(NULL, map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (map == MAP_FAILED) {
        result->failed_step = NR_STEP_STACK;
        result->failed_errno = errno;
        close(report[0]);
        close(report[1]);
        return -1;
    }
    mprotect(map, page, PROT_NONE);

    nr_child_args args = {.config = config, .report_fd = report[1], .parent_pid = getpid()};

    // Block every signal (glibc's internal ones too, hence the raw syscall) so no handler of the parent can run in
    // the child, which shares our memory, before it has reset the dispositions. The child inherits this mask.
    // This also resolves the PLT entries of syscall() and __errno_location before the child needs them.
    uint64_t all = ~(uint64_t)0;
    uint64_t saved = 0;
    errno = 0;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, &saved, NR_KERNEL_SIGSET_SIZE);

    int pidfd = -1;
    pid_t pid = clone(nr_child_main, map + map_size, CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD, &args, &pidfd);
    int clone_errno = errno;

    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &saved, NULL, NR_KERNEL_SIGSET_SIZE);
    munmap(map, map_size);
    close(report[1]);

    if (pid < 0) {
        close(report[0]);
        result->failed_step = NR_STEP_CLONE;
        result->failed_errno = clone_errno;
        return -1;
    }

    // CLONE_VFORK: we resume only after the child exec'd (write end closed) or exited (report already written),
    // so this non-blocking read never has to wait.
    int32_t message[2] = {0, 0};
    ssize_t n;
    do {
        n = read(report[0], message, sizeof message);
    } while (n < 0 && errno == EINTR);
    close(report[0]);

    if (n == (ssize_t)sizeof message) {
        // The child failed before exec and has exited (or is exiting): reap it, blocking only for that moment.
        nr_exit_info ignored;
        while (nr_reap_pidfd(pidfd, 0, &ignored) < 0 && errno == EINTR) {
        }
        close(pidfd);
        result->failed_step = message[0];
        result->failed_errno = message[1];
        return -1;
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

// Parses "pid (comm) S ppid pgrp ..." from /proc/<pid>/stat; comm may hold spaces and parentheses.
static int nr_parse_stat(const char *path, char *state, pid_t *ppid, pid_t *pgrp) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    char buffer[512];
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
    char parsed_state = 0;
    if (close_paren == NULL || sscanf(close_paren + 1, " %c %d %d", &parsed_state, &parsed_ppid, &parsed_pgrp) != 3) {
        errno = EINVAL;
        return -1;
    }
    *state = parsed_state;
    *ppid = parsed_ppid;
    *pgrp = parsed_pgrp;
    return 0;
}

int nr_proc_stat(pid_t pid, char *state, pid_t *ppid, pid_t *pgrp) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    return nr_parse_stat(path, state, ppid, pgrp);
}

int nr_group_live_members(pid_t pgid, pid_t exclude) {
    DIR *proc = opendir("/proc");
    if (proc == NULL) {
        return -1;
    }
    const pid_t self = getpid();
    int live = 0;
    struct dirent *entry;
    while ((entry = readdir(proc)) != NULL) {
        const char *name = entry->d_name;
        if (name[0] < '1' || name[0] > '9') {
            continue;
        }
        pid_t pid = (pid_t)strtol(name, NULL, 10);
        if (pid == exclude) {
            continue;
        }
        char state = 0;
        pid_t ppid = 0;
        pid_t pgrp = 0;
        if (nr_proc_stat(pid, &state, &ppid, &pgrp) < 0 || pgrp != pgid) {
            continue;  // gone meanwhile, or not of this group
        }
        if (state == 'Z' || state == 'X') {
            if (ppid == self) {
                nr_reap_pid_nohang(pid);
            }
            continue;
        }
        live++;
    }
    closedir(proc);
    return live;
}

int nr_list_children(pid_t *out, int max) {
    DIR *tasks = opendir("/proc/self/task");
    if (tasks == NULL) {
        return -1;
    }
    int count = 0;
    struct dirent *entry;
    while ((entry = readdir(tasks)) != NULL && count < max) {
        if (entry->d_name[0] < '1' || entry->d_name[0] > '9') {
            continue;
        }
        char path[320];
        snprintf(path, sizeof path, "/proc/self/task/%s/children", entry->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            continue;  // the thread ended meanwhile
        }
        char buffer[4096];
        size_t used = 0;
        ssize_t n;
        while (used < sizeof buffer - 1 && (n = read(fd, buffer + used, sizeof buffer - 1 - used)) > 0) {
            used += (size_t)n;
        }
        close(fd);
        buffer[used] = '\0';
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
    }
    closedir(tasks);
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

// ---------------------------------------------------------------------------------------------------------------
// Pipes, epoll, eventfd

int nr_output_pipe(int fds[2], int pipe_size) {
    if (pipe2(fds, O_CLOEXEC) < 0) {
        return -1;
    }
    int flags = fcntl(fds[0], F_GETFL);
    if (flags < 0 || fcntl(fds[0], F_SETFL, flags | O_NONBLOCK) < 0) {
        int saved = errno;
        close(fds[0]);
        close(fds[1]);
        errno = saved;
        return -1;
    }
    if (pipe_size > 0) {
        fcntl(fds[0], F_SETPIPE_SZ, pipe_size);  // best effort: capped by /proc/sys/fs/pipe-max-size
    }
    return 0;
}

int nr_epoll_create(void) {
    return epoll_create1(EPOLL_CLOEXEC);
}

int nr_epoll_add(int epfd, int fd, uint64_t token) {
    struct epoll_event event;
    memset(&event, 0, sizeof event);
    event.events = EPOLLIN;
    event.data.u64 = token;
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &event);
}

int nr_epoll_del(int epfd, int fd) {
    struct epoll_event event;
    memset(&event, 0, sizeof event);
    return epoll_ctl(epfd, EPOLL_CTL_DEL, fd, &event);
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
