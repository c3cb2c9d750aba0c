package backstageproxy

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"slices"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// WatchConfig makes the `backstage` app reload the whole Caddy config when
// one of the files it was adapted from changes, as Backstage reloads its
// proxy config when app-config files change. The `backstage` config adapter
// writes it for a config loaded from a file (`caddy run --adapter backstage
// --config app-config.yaml`), listing every file the load read or looked
// for: merged app-config files, `$include` and `$file` targets, and default
// app-config.*.yaml files that did not exist yet. `caddy: {watch: false}` in
// the app-config leaves it out.
//
// A change is adapted again in the server's own environment and applied
// whole or not at all. When the new config does not load, the running one
// stays, the error (file, line, route) is logged, and watching goes on, so
// the next fix applies.
type WatchConfig struct {
	// ConfigFile is the app-config file Caddy was started with, adapted
	// again on every change.
	ConfigFile string `json:"config_file"`

	// Files are the files to watch, ConfigFile included. A file that does
	// not exist is watched for appearing.
	Files []string `json:"files,omitempty"`

	// Interval is how often the files are checked. Default: 1s.
	Interval caddy.Duration `json:"interval,omitempty"`
}

const (
	// defaultWatchInterval is how often watched files are checked, as
	// Caddy's own `--watch` does.
	defaultWatchInterval = time.Second
	// maxWatchedFileBytes bounds what is hashed of one watched file (the
	// loader refuses larger files anyway).
	maxWatchedFileBytes = 10 << 20
)

// fileState is what the watcher remembers of a file: whether it exists,
// and a hash of its content. Modification times are not enough: an editor
// may save twice within the file system's time resolution.
type fileState struct {
	exists bool
	sum    [sha256.Size]byte
}

func readFileState(path string) fileState {
	f, err := os.Open(path)
	if err != nil {
		return fileState{}
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(f, maxWatchedFileBytes)); err != nil {
		return fileState{}
	}
	st := fileState{exists: true}
	h.Sum(st.sum[:0])
	return st
}

// watcher polls the watched files and reloads on a change.
type watcher struct {
	cfg    WatchConfig
	logger *zap.Logger
	cancel context.CancelFunc
	done   chan struct{}
}

// startWatcher starts polling; stop ends it without waiting for a reload in
// progress (a reload stops this app, and its Stop must not wait on itself).
func startWatcher(cfg WatchConfig, logger *zap.Logger) *watcher {
	ctx, cancel := context.WithCancel(context.Background())
	w := &watcher{cfg: cfg, logger: logger, cancel: cancel, done: make(chan struct{})}
	go w.run(ctx)
	return w
}

func (w *watcher) stop() { w.cancel() }

func (w *watcher) run(ctx context.Context) {
	defer close(w.done)
	interval := time.Duration(w.cfg.Interval)
	if interval <= 0 {
		interval = defaultWatchInterval
	}
	files := slices.Clone(w.cfg.Files)
	if !slices.Contains(files, w.cfg.ConfigFile) {
		files = append([]string{w.cfg.ConfigFile}, files...)
	}
	states := make(map[string]fileState, len(files))
	for _, f := range files {
		states[f] = readFileState(f)
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		changed := ""
		for _, f := range files {
			if st := readFileState(f); st != states[f] {
				states[f] = st
				if changed == "" {
					changed = f
				}
			}
		}
		if changed == "" {
			continue
		}
		more, err := w.reload(changed)
		if ctx.Err() != nil {
			return // the reload applied: the new config's app watches now
		}
		if err != nil {
			// Keep watching, the files of the failed attempt too (a
			// $include that did not exist yet), so that the fix applies.
			for _, f := range more {
				if _, ok := states[f]; !ok {
					files = append(files, f)
					states[f] = readFileState(f)
				}
			}
		}
	}
}

// reload adapts the config file again and loads the result. files are the
// files the attempt read or looked for.
func (w *watcher) reload(changed string) (files []string, err error) {
	logger := w.logger.With(zap.String("changed", changed), zap.String("config_file", w.cfg.ConfigFile))
	body, err := os.ReadFile(w.cfg.ConfigFile)
	if err != nil {
		logger.Error("config file changed but cannot be read; keeping the running config", zap.Error(err))
		return nil, err
	}
	out, warnings, files, err := adaptFile(body, w.cfg.ConfigFile)
	if err != nil {
		logger.Error("config file changed but does not load; keeping the running config and watching for a fix", zap.Error(err))
		return files, err
	}
	for _, warn := range warnings {
		logger.Warn(warn.Message, zap.String("file", warn.File), zap.Int("line", warn.Line))
	}
	if err := caddy.Load(out, false); err != nil {
		if errors.Is(err, context.Canceled) {
			return files, nil
		}
		logger.Error("config file changed but the new config does not run; keeping the running config", zap.Error(err))
		return files, err
	}
	logger.Info("config file changed; new config loaded")
	return files, nil
}
