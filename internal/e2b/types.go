package e2b

import "time"

// The JSON shapes of E2B's REST API (the subset Wrenn serves), written
// from E2B's public OpenAPI document.

// apiError is E2B's error body: the HTTP status as a number and a message.
type apiError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// newSandbox is the create body (POST /sandboxes, /v2/sandboxes). Fields
// Wrenn cannot honour yet are decoded so that a request using them gets a
// clear 501 instead of being silently ignored.
type newSandbox struct {
	TemplateID          string                  `json:"templateID"`
	Timeout             *int64                  `json:"timeout"`
	AutoPause           *bool                   `json:"autoPause"`
	AutoPauseMemory     *bool                   `json:"autoPauseMemory"`
	AutoResume          *struct{ Enabled bool } `json:"autoResume"`
	Secure              *bool                   `json:"secure"`
	AllowInternetAccess *bool                   `json:"allow_internet_access"`
	Metadata            map[string]string       `json:"metadata"`
	EnvVars             map[string]string       `json:"envVars"`
	MCP                 map[string]any          `json:"mcp"`
	Network             map[string]any          `json:"network"`
	VolumeMounts        []volumeMount           `json:"volumeMounts"`
}

// sandbox is the create and connect answer.
type sandbox struct {
	TemplateID         string  `json:"templateID"`
	SandboxID          string  `json:"sandboxID"`
	Alias              string  `json:"alias,omitempty"`
	ClientID           string  `json:"clientID"`
	EnvdVersion        string  `json:"envdVersion"`
	EnvdAccessToken    string  `json:"envdAccessToken"`
	TrafficAccessToken *string `json:"trafficAccessToken"`
	Domain             *string `json:"domain"`
}

// sandboxDetail is GET /sandboxes/{id}.
type sandboxDetail struct {
	TemplateID          string            `json:"templateID"`
	Alias               string            `json:"alias,omitempty"`
	SandboxID           string            `json:"sandboxID"`
	ClientID            string            `json:"clientID"`
	StartedAt           time.Time         `json:"startedAt"`
	EndAt               time.Time         `json:"endAt"`
	EnvdVersion         string            `json:"envdVersion"`
	EnvdAccessToken     string            `json:"envdAccessToken,omitempty"`
	Domain              *string           `json:"domain"`
	CPUCount            int64             `json:"cpuCount"`
	MemoryMB            int64             `json:"memoryMB"`
	DiskSizeMB          int64             `json:"diskSizeMB"`
	Metadata            map[string]string `json:"metadata,omitempty"`
	State               string            `json:"state"`
	AllowInternetAccess *bool             `json:"allowInternetAccess,omitempty"`
	VolumeMounts        []any             `json:"volumeMounts"`
}

// listedSandbox is one item of GET /v2/sandboxes and GET /sandboxes.
type listedSandbox struct {
	TemplateID   string            `json:"templateID"`
	Alias        string            `json:"alias,omitempty"`
	SandboxID    string            `json:"sandboxID"`
	ClientID     string            `json:"clientID"`
	StartedAt    time.Time         `json:"startedAt"`
	EndAt        time.Time         `json:"endAt"`
	CPUCount     int64             `json:"cpuCount"`
	MemoryMB     int64             `json:"memoryMB"`
	DiskSizeMB   int64             `json:"diskSizeMB"`
	Metadata     map[string]string `json:"metadata,omitempty"`
	State        string            `json:"state"`
	EnvdVersion  string            `json:"envdVersion"`
	VolumeMounts []any             `json:"volumeMounts"`
}

// timeoutBody is POST /sandboxes/{id}/timeout and /v2/…/connect.
type timeoutBody struct {
	Timeout *int64 `json:"timeout"`
	// Memory false: on pause, keep files only (hibernate); on connect or
	// resume of a paused sandbox, a cold boot instead of a restore (501).
	Memory *bool `json:"memory"`
}

// refreshBody is POST /sandboxes/{id}/refreshes.
type refreshBody struct {
	Duration *int64 `json:"duration"`
}

// template is one item of GET /templates.
type template struct {
	TemplateID    string     `json:"templateID"`
	BuildID       string     `json:"buildID"`
	CPUCount      int64      `json:"cpuCount"`
	MemoryMB      int64      `json:"memoryMB"`
	DiskSizeMB    int64      `json:"diskSizeMB"`
	Public        bool       `json:"public"`
	Aliases       []string   `json:"aliases"`
	Names         []string   `json:"names"`
	CreatedAt     time.Time  `json:"createdAt"`
	UpdatedAt     time.Time  `json:"updatedAt"`
	SpawnCount    int64      `json:"spawnCount"`
	BuildCount    int64      `json:"buildCount"`
	EnvdVersion   string     `json:"envdVersion"`
	BuildStatus   string     `json:"buildStatus"`
	LastSpawnedAt *time.Time `json:"lastSpawnedAt"`
}
