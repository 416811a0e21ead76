// Built with _GNU_SOURCE (Package.swift). See include/nr_watchdog.h for the contract of each function.
#include "nr_watchdog.h"
#include "nr_kernel.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>

// Asked for the runner's end: 8 MiB holds about twenty thousand queued commands (each message costs a few hundred
// bytes of socket memory), so a watchdog that is merely descheduled never finds its queue full.
#define NR_WATCHDOG_SEND_BUFFER (8 << 20)

// ---------------------------------------------------------------------------------------------------------------
// The child. It is a copy-on-write copy of a multithreaded process in which only the cloning thread exists: other
// threads may have held locks (malloc's, stdio's, the dynamic linker's) that nobody will release here. So it makes
// raw system calls only, through syscall(), whose PLT entry the parent resolved before the clone (as it did errno's
// __errno_location), and keeps its state in these statics (its own copies: the parent never writes them). The one
// thing it shares with the runner is the group table, which it only reads.

static const int32_t *nr_wd_groups;
static int nr_wd_armed;
static int64_t nr_wd_deadline_ns;
static pid_t nr_wd_self;

static int64_t nr_wd_now_ns(void) {
    struct timespec now;
    now.tv_sec = 0;
    now.tv_nsec = 0;
    syscall(SYS_clock_gettime, CLOCK_BOOTTIME, &now);
    return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

// Sets the timerfd to the absolute deadline, or disarms it (deadline_ns < 0).
static void nr_wd_set_timer(int timer_fd, int64_t deadline_ns) {
    struct itimerspec spec;
    spec.it_interval.tv_sec = 0;
    spec.it_interval.tv_nsec = 0;
    if (deadline_ns < 0) {
        spec.it_value.tv_sec = 0;  // all zero: disarm
        spec.it_value.tv_nsec = 0;
    } else {
        // A zero it_value would disarm: a deadline at 0 is simply long past.
        if (deadline_ns == 0) {
            deadline_ns = 1;
        }
        spec.it_value.tv_sec = deadline_ns / 1000000000;
        spec.it_value.tv_nsec = deadline_ns % 1000000000;
    }
    syscall(SYS_timerfd_settime, timer_fd, TFD_TIMER_ABSTIME, &spec, NULL);
}

// Reports never block: a runner that is stopped does not read them, and the watchdog must stay responsive.
static void nr_wd_report(int socket_fd, const nr_watchdog_report *report) {
    syscall(SYS_sendto, socket_fd, report, sizeof *report, MSG_DONTWAIT | MSG_NOSIGNAL, NULL, 0);
}

static void nr_wd_reject(int socket_fd, const nr_watchdog_command *command, int error) {
    nr_watchdog_report report;
    report.kind = NR_WATCHDOG_REJECTED;
    report.command_kind = command->kind;
    report.group = command->group;
    report.error = error;
    report.watched = 0;
    report.signalled = 0;
    report.deadline_ns = 0;
    report.fired_ns = 0;
    nr_wd_report(socket_fd, &report);
}

// SIGKILL to every group in the table: how many groups there were, and how many the signal reached.
static void nr_wd_kill_groups(int *watched, int *signalled) {
    *watched = 0;
    *signalled = 0;
    for (int i = 0; i < NR_WATCHDOG_MAX_GROUPS; i++) {
        pid_t group = __atomic_load_n(&nr_wd_groups[i], __ATOMIC_SEQ_CST);
        // kill(-1) would reach every process we may signal, kill(-0) our own group: never those, whatever the
        // table says. Our own session's group would end the watchdog midway through a kill.
        if (group <= 1 || group == nr_wd_self) {
            continue;
        }
        (*watched)++;
        if (syscall(SYS_kill, -group, SIGKILL) == 0) {
            (*signalled)++;
        }
    }
}

__attribute__((noreturn)) static void nr_wd_exit(int status) {
    syscall(SYS_exit_group, status);
    __builtin_unreachable();
}

static void nr_wd_handle(int socket_fd, int timer_fd, const nr_watchdog_command *command) {
    switch (command->kind) {
    case NR_WATCHDOG_ARM:
        nr_wd_armed = 1;
        nr_wd_deadline_ns = command->deadline_ns > 0 ? command->deadline_ns : 0;
        nr_wd_set_timer(timer_fd, nr_wd_deadline_ns);
        return;
    case NR_WATCHDOG_DISARM:
        nr_wd_armed = 0;
        nr_wd_set_timer(timer_fd, -1);
        return;
    case NR_WATCHDOG_QUIT:
        nr_wd_exit(NR_WATCHDOG_EXIT_QUIT);
    default:
        nr_wd_reject(socket_fd, command, EINVAL);
        return;
    }
}

// Handles every command queued now. Returns 0 when the queue is empty, -1 when the runner's end is closed (end of
// file) or unusable.
static int nr_wd_drain_commands(int socket_fd, int timer_fd) {
    for (;;) {
        nr_watchdog_command command;
        long n = syscall(SYS_recvfrom, socket_fd, &command, sizeof command, MSG_DONTWAIT, NULL, NULL);
        if (n == (long)sizeof command) {
            nr_wd_handle(socket_fd, timer_fd, &command);
        } else if (n == 0) {
            return -1;  // end of file: every copy of the runner's end is closed
        } else if (n > 0) {
            command.kind = 0;
            command.group = 0;
            nr_wd_reject(socket_fd, &command, EINVAL);  // a message of the wrong size
        } else if (errno == EAGAIN) {
            return 0;
        } else if (errno != EINTR && errno != ECONNRESET) {
            // ECONNRESET: the runner went away with reports unread. The commands it sent before are still queued
            // and end of file follows them, so keep reading: a group it removed last must not be killed.
            return -1;
        }
    }
}

static void nr_wd_fire(int socket_fd, int timer_fd) {
    nr_watchdog_report report;
    report.kind = NR_WATCHDOG_FIRED;
    report.command_kind = 0;
    report.group = 0;
    report.error = 0;
    nr_wd_kill_groups(&report.watched, &report.signalled);
    report.deadline_ns = nr_wd_deadline_ns;
    report.fired_ns = nr_wd_now_ns();
    nr_wd_armed = 0;
    nr_wd_set_timer(timer_fd, -1);
    nr_wd_report(socket_fd, &report);
}

__attribute__((noreturn)) static void nr_wd_serve(int socket_fd, int timer_fd) {
    for (;;) {
        struct pollfd fds[2];
        fds[0].fd = socket_fd;
        fds[0].events = POLLIN;
        fds[0].revents = 0;
        fds[1].fd = timer_fd;
        fds[1].events = POLLIN;
        fds[1].revents = 0;
        // No timeout: the timerfd (CLOCK_BOOTTIME, absolute) wakes us at the deadline, even across a suspend.
        syscall(SYS_ppoll, fds, 2, NULL, NULL, NR_KERNEL_SIGSET_SIZE);
        if (fds[1].revents != 0) {
            uint64_t expirations;
            syscall(SYS_read, timer_fd, &expirations, sizeof expirations);
        }
        // Commands first: an ARM already queued when the deadline passed was sent before it, so it counts.
        if (fds[0].revents != 0 && nr_wd_drain_commands(socket_fd, timer_fd) < 0) {
            int watched, signalled;
            nr_wd_kill_groups(&watched, &signalled);
            nr_wd_exit(NR_WATCHDOG_EXIT_RUNNER_GONE);
        }
        if (nr_wd_armed && nr_wd_now_ns() >= nr_wd_deadline_ns) {
            nr_wd_fire(socket_fd, timer_fd);
        }
    }
}

__attribute__((noreturn)) static void nr_wd_child_main(int socket_fd, int timer_fd, const int32_t *groups) {
    // Every signal is still blocked (the parent blocked them before the clone). The runner's handlers would run
    // its code in a process that has none of its threads: reset every disposition. Then ignore what is meant for
    // the runner or its terminal: the watchdog ends by QUIT or by the runner's death (or SIGKILL), so that a
    // SIGTERM to the whole service or a Ctrl-C does not leave the jobs unguarded while the runner shuts down.
    nr_reset_signal_dispositions(NR_SIGNAL_BIT(SIGHUP) | NR_SIGNAL_BIT(SIGINT) | NR_SIGNAL_BIT(SIGQUIT) |
                                 NR_SIGNAL_BIT(SIGTERM) | NR_SIGNAL_BIT(SIGPIPE) | NR_SIGNAL_BIT(SIGTSTP) |
                                 NR_SIGNAL_BIT(SIGTTIN) | NR_SIGNAL_BIT(SIGTTOU));

    // Its own session and group: stopping or signalling the runner's group (kill -STOP -pgid, a terminal's ^Z)
    // leaves the watchdog running. A fresh child is never a group leader, so setsid cannot fail.
    syscall(SYS_setsid);
    nr_wd_self = (pid_t)syscall(SYS_getpid);
    syscall(SYS_prctl, PR_SET_NAME, "nr-watchdog", 0, 0, 0);
    syscall(SYS_chdir, "/");  // do not keep the runner's working directory busy

    // Nothing of the runner's stays open here (Redis sockets, job pipes, the runner's end of this very socket,
    // whose copy here would keep end of file from ever arriving).
    unsigned int low = (unsigned int)(socket_fd < timer_fd ? socket_fd : timer_fd);
    unsigned int high = (unsigned int)(socket_fd < timer_fd ? timer_fd : socket_fd);
    if (low > 0) {
        nr_close_fd_range(0, low - 1);
    }
    nr_close_fd_range(low + 1, high - 1);
    nr_close_fd_range(high + 1, ~0U);

    nr_wd_groups = groups;
    nr_wd_armed = 0;
    uint64_t empty = 0;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &empty, NULL, NR_KERNEL_SIGSET_SIZE);
    nr_wd_serve(socket_fd, timer_fd);
}

// ---------------------------------------------------------------------------------------------------------------
// The runner's side

static int nr_wd_fail(nr_watchdog_started *started, int step, int err) {
    started->failed_step = step;
    started->failed_errno = err;
    return -1;
}

int nr_watchdog_start(nr_watchdog_started *started) {
    started->pid = -1;
    started->pidfd = -1;
    started->socket_fd = -1;
    started->groups = NULL;
    started->failed_step = NR_WATCHDOG_STEP_NONE;
    started->failed_errno = 0;

    // SOCK_SEQPACKET rather than pipes: a record is one message (whole or not at all), and a send to a watchdog
    // that is gone fails with EPIPE instead of killing the runner with SIGPIPE (as a pipe or a stream socket would;
    // the runner does not ignore SIGPIPE). MSG_NOSIGNAL on every send says so explicitly.
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) < 0) {
        return nr_wd_fail(started, NR_WATCHDOG_STEP_SOCKETPAIR, errno);
    }
    int runner_fd = fds[0];
    int watchdog_fd = fds[1];
    // Best effort: SO_SNDBUFFORCE (CAP_NET_ADMIN) may exceed net.core.wmem_max, SO_SNDBUF is capped by it.
    int buffer = NR_WATCHDOG_SEND_BUFFER;
    if (setsockopt(runner_fd, SOL_SOCKET, SO_SNDBUFFORCE, &buffer, sizeof buffer) < 0) {
        setsockopt(runner_fd, SOL_SOCKET, SO_SNDBUF, &buffer, sizeof buffer);
    }

    // CLOCK_BOOTTIME, Swift's ContinuousClock on Linux: it keeps counting while the machine is suspended, as the
    // lease in Redis keeps ageing. Made here so that nothing the child does can fail.
    int timer_fd = timerfd_create(CLOCK_BOOTTIME, TFD_CLOEXEC | TFD_NONBLOCK);
    if (timer_fd < 0) {
        int err = errno;
        close(runner_fd);
        close(watchdog_fd);
        return nr_wd_fail(started, NR_WATCHDOG_STEP_TIMERFD, err);
    }

    // Shared with the child (no CLONE_VM: everything else is its own copy). Zero-filled: every slot free.
    void *table = mmap(NULL, NR_WATCHDOG_MAX_GROUPS * sizeof(int32_t), PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (table == MAP_FAILED) {
        int err = errno;
        close(runner_fd);
        close(watchdog_fd);
        close(timer_fd);
        return nr_wd_fail(started, NR_WATCHDOG_STEP_MMAP, err);
    }
    int32_t *groups = (int32_t *)table;

    // Block every signal (glibc's internal ones too, hence the raw syscall) so that no handler of the runner runs
    // in the child before it has reset the dispositions; the child inherits this mask. This call also resolves the
    // PLT entry of syscall(), and `errno = 0` that of __errno_location, before the child needs them.
    uint64_t all = ~(uint64_t)0;
    uint64_t saved = 0;
    errno = 0;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, &saved, NR_KERNEL_SIGSET_SIZE);

    // The raw clone returns twice, like fork, but runs no atfork handlers (they take locks). Without CLONE_VM the
    // child continues on its own copy of this stack. The pidfd lands in the parent_tid argument (third on every
    // architecture we build for).
    int pidfd = -1;
    long pid = syscall(SYS_clone, (unsigned long)(CLONE_PIDFD | SIGCHLD), NULL, &pidfd, NULL, NULL);
    if (pid == 0) {
        nr_wd_child_main(watchdog_fd, timer_fd, groups);
    }
    int clone_errno = errno;

    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &saved, NULL, NR_KERNEL_SIGSET_SIZE);
    close(watchdog_fd);
    close(timer_fd);
    if (pid < 0) {
        close(runner_fd);
        munmap(table, NR_WATCHDOG_MAX_GROUPS * sizeof(int32_t));
        return nr_wd_fail(started, NR_WATCHDOG_STEP_CLONE, clone_errno);
    }
    started->pid = (pid_t)pid;
    started->pidfd = pidfd;
    started->socket_fd = runner_fd;
    started->groups = groups;
    return 0;
}

void nr_watchdog_set_group(int32_t *groups, int slot, int32_t group) {
    __atomic_store_n(&groups[slot], group, __ATOMIC_SEQ_CST);
}

void nr_watchdog_release_groups(int32_t *groups) {
    munmap(groups, NR_WATCHDOG_MAX_GROUPS * sizeof(int32_t));
}

int nr_watchdog_send(int fd, const nr_watchdog_command *command) {
    for (;;) {
        ssize_t n = send(fd, command, sizeof *command, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n == (ssize_t)sizeof *command) {
            return 0;
        }
        if (n >= 0) {
            return EMSGSIZE;  // cannot happen for a SOCK_SEQPACKET message: it goes whole or not at all
        }
        if (errno != EINTR) {
            return errno;
        }
    }
}

int nr_watchdog_receive(int fd, nr_watchdog_report *report) {
    for (;;) {
        ssize_t n = recv(fd, report, sizeof *report, 0);
        if (n == (ssize_t)sizeof *report) {
            return 1;
        }
        if (n == 0) {
            return 0;
        }
        if (n > 0) {
            continue;  // not a report of ours: pass over it
        }
        if (errno != EINTR && errno != ECONNRESET) {
            return -1;
        }
    }
}

int nr_wait_exited(int pidfd) {
    for (;;) {
        siginfo_t info;
        info.si_pid = 0;
        if (waitid((idtype_t)P_PIDFD, (id_t)pidfd, &info, WEXITED | WNOWAIT) == 0) {
            return 0;
        }
        if (errno != EINTR) {
            return -1;
        }
    }
}

int nr_shutdown_write(int fd) {
    return shutdown(fd, SHUT_WR);
}
