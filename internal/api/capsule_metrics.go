package api

import (
	"net/http"

	"connectrpc.com/connect"

	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

func (a *API) capsuleMetrics(w http.ResponseWriter, r *http.Request) {
	win := pb.MetricsWindow_METRICS_WINDOW_10M
	switch r.URL.Query().Get("window") {
	case "", "10m":
	case "2h":
		win = pb.MetricsWindow_METRICS_WINDOW_2H
	case "24h":
		win = pb.MetricsWindow_METRICS_WINDOW_24H
	default:
		a.writeError(w, r, errorf(CodeInvalidArgument, "window must be 10m, 2h or 24h"))
		return
	}
	c, cl, err := a.runningCapsule(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	resp, err := cl.GetCapsuleMetrics(r.Context(), connect.NewRequest(&pb.GetCapsuleMetricsRequest{CapsuleId: c.ID, Window: win}))
	if err != nil {
		a.writeError(w, r, agentError(err))
		return
	}
	type point struct {
		TS        int64   `json:"ts_ms"`
		CPUPct    float64 `json:"cpu_used_pct"`
		CPUCount  int32   `json:"cpu_count"`
		MemUsed   uint64  `json:"mem_used_bytes"`
		MemTotal  uint64  `json:"mem_total_bytes"`
		DiskUsed  uint64  `json:"disk_used_bytes"`
		DiskTotal uint64  `json:"disk_total_bytes"`
	}
	pts := make([]point, 0, len(resp.Msg.GetPoints()))
	for _, p := range resp.Msg.GetPoints() {
		pts = append(pts, point{p.GetTsMs(), p.GetCpuUsedPct(), p.GetCpuCount(), p.GetMemUsedBytes(), p.GetMemTotalBytes(), p.GetDiskUsedBytes(), p.GetDiskTotalBytes()})
	}
	writeJSON(w, http.StatusOK, map[string]any{"resolution_sec": resp.Msg.GetResolutionSec(), "points": pts})
}
