package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// usage is what one cloudlet process cost. QEMU is its child: the rusage that Wait returns
// adds every reaped child (a TCG guest's CPU time and RAM would swamp the cloudlet's own), so
// the process's own figures come from /proc: its peak RSS (VmHWM, sampled while it runs: gone
// once it has exited) and its CPU time (read from the zombie before it is reaped).
type usage struct {
	PeakRSS int64   // bytes, the cloudlet process alone
	CPU     float64 // user + system seconds, the cloudlet process alone
	// With its reaped children (QEMU): Wait's rusage.
	TreePeakRSS int64
	TreeCPU     float64
}

// rssInterval is how often the peak RSS is sampled. VmHWM is the peak so far, so a sample
// misses only what the process allocates after the last one (its teardown).
const rssInterval = 100 * time.Millisecond

// usageWatch samples a running process's peak RSS until done.
type usageWatch struct {
	pid  int
	stop chan struct{}
	wg   sync.WaitGroup

	mu   sync.Mutex
	peak int64 // guarded by mu
}

func watchUsage(pid int) *usageWatch {
	w := &usageWatch{pid: pid, stop: make(chan struct{})}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		t := time.NewTicker(rssInterval)
		defer t.Stop()
		for {
			w.sample()
			select {
			case <-w.stop:
				return
			case <-t.C:
			}
		}
	}()
	return w
}

func (w *usageWatch) sample() {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", w.pid))
	if err != nil {
		return
	}
	if hwm, ok := vmHWM(b); ok {
		w.mu.Lock()
		w.peak = max(w.peak, hwm)
		w.mu.Unlock()
	}
}

// exited is called once the process has exited and before it is reaped: it stops sampling
// and reads the process's own CPU time from its zombie.
func (w *usageWatch) exited() (usage, error) {
	close(w.stop)
	w.wg.Wait()
	var u usage
	w.mu.Lock()
	u.PeakRSS = w.peak
	w.mu.Unlock()
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PID, w.pid, &info, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
		return u, fmt.Errorf("waitid %d: %w", w.pid, err)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", w.pid))
	if err != nil {
		return u, err
	}
	u.CPU, err = statCPU(b)
	return u, err
}

// withTree adds Wait's rusage (the process and its reaped children).
func (u *usage) withTree(st *os.ProcessState) {
	if ru, ok := st.SysUsage().(*syscall.Rusage); ok && ru != nil {
		u.TreePeakRSS = ru.Maxrss << 10 // KiB on Linux
		u.TreeCPU = time.Duration(syscall.TimevalToNsec(ru.Utime) + syscall.TimevalToNsec(ru.Stime)).Seconds()
	}
}

// vmHWM reads the "VmHWM: N kB" line of /proc/PID/status, in bytes.
func vmHWM(status []byte) (int64, bool) {
	for line := range bytes.Lines(status) {
		rest, ok := bytes.CutPrefix(line, []byte("VmHWM:"))
		if !ok {
			continue
		}
		f := strings.Fields(string(rest))
		if len(f) != 2 || f[1] != "kB" {
			return 0, false
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		return kb << 10, err == nil
	}
	return 0, false
}

// userHZ is the unit of /proc/PID/stat's times: USER_HZ, 100 on every Linux architecture Go
// supports.
const userHZ = 100

// statCPU reads utime + stime (fields 14 and 15) of /proc/PID/stat, in seconds. The command
// name (field 2) may hold spaces and parentheses: fields are counted after its last ')'.
func statCPU(stat []byte) (float64, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc stat %q: no command name", stat)
	}
	f := strings.Fields(string(stat[i+1:])) // f[0] is field 3 (state)
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc stat %q: %d fields after the name, want at least 13", stat, len(f))
	}
	var ticks int64
	for _, s := range f[11:13] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc stat: cpu time %q: %w", s, err)
		}
		ticks += v
	}
	return float64(ticks) / userHZ, nil
}
