/* stamp FILE: appends CLOCK_REALTIME in nanoseconds and a newline to FILE, and exits 0.
 * The benchmark's job for "when did the job's process start running": the clock is read first thing in main,
 * and the program is linked statically so no dynamic loader runs before it. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    if (argc < 2) return 2;
    char line[32];
    int length = snprintf(line, sizeof line, "%lld\n", (long long)now.tv_sec * 1000000000LL + now.tv_nsec);
    int fd = open(argv[1], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return 1;
    ssize_t written = write(fd, line, (size_t)length);
    close(fd);
    return written == length ? 0 : 1;
}
