package api

import (
	"net/http"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/pkg/wrennapi"
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
	pts := make([]wrennapi.MetricPoint, 0, len(resp.Msg.GetPoints()))
	for _, p := range resp.Msg.GetPoints() {
		pts = append(pts, wrennapi.MetricPoint{
			TimestampMs: p.GetTsMs(), CPUUsedPct: p.GetCpuUsedPct(), CPUCount: p.GetCpuCount(),
			MemUsedBytes: p.GetMemUsedBytes(), MemTotalBytes: p.GetMemTotalBytes(),
			DiskUsedBytes: p.GetDiskUsedBytes(), DiskTotalBytes: p.GetDiskTotalBytes(),
		})
	}
	writeJSON(w, http.StatusOK, wrennapi.CapsuleMetrics{ResolutionSec: resp.Msg.GetResolutionSec(), Points: pts})
}
