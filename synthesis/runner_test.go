package synthesis

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/cloudlet/cloudlet/probe"
)

// blockingConsole never shows the text a serial probe waits for.
type blockingConsole struct{}

func (blockingConsole) WaitFor(ctx context.Context, text string) error {
	<-ctx.Done()
	return ctx.Err()
}

// TestProbeEndsWithSession: a probe that would wait an hour for an answer ends when its
// session stops it, and stop returns only once it has: nothing outlives the session.
func TestProbeEndsWithSession(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close() // nothing answers there
	tests := []struct{ name, probe string }{
		{"http", "http://" + closed + "/"},
		{"tcp", "tcp://" + closed},
		{"serial", "serial:never printed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := probe.Parse(tc.probe)
			if err != nil {
				t.Fatal(err)
			}
			r := newRunner(Options{Probe: &p, ProbeTimeout: time.Hour})
			answers, stop := r.startProbe(context.Background(), blockingConsole{})
			time.Sleep(50 * time.Millisecond) // let it try
			stopped := make(chan struct{})
			go func() {
				stop()
				close(stopped)
			}()
			select {
			case <-stopped:
			case <-time.After(5 * time.Second):
				t.Fatal("stop did not end the probe within 5 s")
			}
			select {
			case err := <-answers:
				if err == nil {
					t.Fatal("a probe nobody answered succeeded")
				}
			default:
				t.Fatal("stop returned before the probe did")
			}
		})
	}
	t.Run("none", func(t *testing.T) {
		r := newRunner(Options{})
		answers, stop := r.startProbe(context.Background(), blockingConsole{})
		stop()
		if answers != nil {
			t.Fatal("no probe, but a channel of answers")
		}
	})
}
