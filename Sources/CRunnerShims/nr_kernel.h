// Kernel ABI pieces and raw-syscall helpers shared by the .c files of CRunnerShims (not part of the module's API).
// Everything here is safe in a child of a multithreaded process: raw system calls only.
#pragma once

#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif
#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif

// <linux/fs.h> clashes with <sys/mount.h>: the inode flags ioctls and the two flags, as the kernel defines them (the
// value is an int, whatever the request's size field says). NR_FS_IMMUTABLE_FL and NR_FS_APPEND_FL are in
// CRunnerShims.h.
#ifndef FS_IOC_GETFLAGS
#define FS_IOC_GETFLAGS _IOR('f', 1, long)
#define FS_IOC_SETFLAGS _IOW('f', 2, long)
#endif

// The kernel's sigset is 64 bits on every Linux architecture we build for; glibc's sigset_t is 1024 bits.
#define NR_KERNEL_SIGSET_SIZE 8

// The kernel's struct sigaction for rt_sigaction (not glibc's), enough to set SIG_DFL or SIG_IGN.
struct nr_kernel_sigaction {
    void *handler;
    unsigned long flags;
    void *restorer;
    uint64_t mask;
};

// Closes the fds first..last (inclusive): close_range, or a close loop up to the soft RLIMIT_NOFILE where
// close_range is missing (before Linux 5.9).
static inline void nr_close_fd_range(unsigned int first, unsigned int last) {
    if (first > last || syscall(SYS_close_range, first, last, 0U) == 0) {
        return;
    }
    uint64_t limits[2];  // struct rlimit64 {rlim_cur, rlim_max}; set one by one: an initializer may become memset()
    limits[0] = 0;
    limits[1] = 0;
    uint64_t highest = 65536;
    if (syscall(SYS_prlimit64, 0, RLIMIT_NOFILE, NULL, limits) == 0 && limits[0] < (uint64_t)(1 << 20)) {
        highest = limits[0];
    }
    for (uint64_t fd = first; fd <= last && fd < highest; fd++) {
        syscall(SYS_close, (long)fd);
    }
}

// The kernel's sigset bit of a signal.
#define NR_SIGNAL_BIT(sig) ((uint64_t)1 << ((sig) - 1))

// Sets every signal's disposition (but SIGKILL's and SIGSTOP's) to SIG_IGN when its bit is in `ignored`, else to
// SIG_DFL: no handler inherited from the parent can run here, including glibc's internal signals' handlers.
static inline void nr_reset_signal_dispositions(uint64_t ignored) {
    struct nr_kernel_sigaction action;
    action.flags = 0;
    action.restorer = NULL;
    action.mask = 0;
    for (int sig = 1; sig <= 64; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP) {
            continue;
        }
        action.handler = (ignored & NR_SIGNAL_BIT(sig)) ? (void *)SIG_IGN : (void *)SIG_DFL;
        syscall(SYS_rt_sigaction, sig, &action, NULL, NR_KERNEL_SIGSET_SIZE);
    }
}
