// Package store owns the control plane's persistent state: the domain types
// (teams, users, keys, hosts, templates, builds, capsules, audit log, usage)
// and the Store interface the API, scheduler and workers use. It imports no
// SQL driver; internal/store/sqlite and internal/store/postgres implement
// Store, and internal/store/storetest is the conformance suite both pass.
//
// Invariants every implementation keeps:
//   - Team data is read and changed only through methods that take a team ID
//     and match it in the same statement: team A can never read or touch
//     team B's capsules, keys, templates or builds. Methods that cross teams
//     are named for it (Admin…, …Unscoped, ListCapsulesByHost) and are for
//     admins and internal workers only.
//   - Conditional updates (capsule/build status transitions, the last-admin
//     rule) are single atomic statements that report whether they applied.
//   - Timestamps are UTC with microsecond precision.
//   - Driver errors are mapped to the errors below; callers test them with
//     errors.Is.
package store

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Domain errors. Implementations wrap them with context.
var (
	// ErrNotFound: the row does not exist, or belongs to another team.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: a unique key (email, name, id, hash) is taken.
	ErrAlreadyExists = errors.New("already exists")
	// ErrConflict: the row exists but is not in a state that allows the
	// change (e.g. a foreign key points nowhere, a token was already used).
	ErrConflict = errors.New("conflict")
	// ErrLastAdmin: the change would leave no active platform admin.
	ErrLastAdmin = errors.New("would remove the last active platform admin")
	// ErrInvalidCursor: a pagination cursor could not be decoded.
	ErrInvalidCursor = errors.New("invalid cursor")
	// ErrInvalid: a value breaks a constraint (unknown status, role, ...).
	ErrInvalid = errors.New("invalid value")
	// ErrUnavailable: the database cannot be reached (down, restarting,
	// connection lost mid-query). Retrying later may succeed; the API
	// answers 503.
	ErrUnavailable = errors.New("the database is unavailable")
)

// PlatformTeamID is the seeded team that owns public templates and under
// which admin-panel actions are audited. It cannot be deleted.
const PlatformTeamID = "team-platform"

// Role is a member's role in a team.
type Role string

// Team roles, strongest first.
const (
	RoleOwner  Role = "owner"
	RoleAdmin  Role = "admin"
	RoleMember Role = "member"
)

// UserStatus says whether a user may sign in.
type UserStatus string

// User statuses.
const (
	UserActive   UserStatus = "active"
	UserInactive UserStatus = "inactive"
)

// TokenKind names what a UserToken is for.
type TokenKind string

// User token kinds.
const (
	TokenRefresh       TokenKind = "refresh"
	TokenEmailVerify   TokenKind = "email_verify"
	TokenPasswordReset TokenKind = "password_reset"
)

// HostStatus is a host's availability for scheduling.
type HostStatus string

// Host statuses.
const (
	HostOnline      HostStatus = "online"
	HostUnavailable HostStatus = "unavailable"
	HostDraining    HostStatus = "draining"
)

// Host drain states (Host.Drain).
const (
	HostDrainNone     = ""
	HostDrainDraining = "draining"
	HostDrainDrained  = "drained"
)

// CapsuleStatus is a capsule's lifecycle state.
type CapsuleStatus string

// Capsule states: pending → starting → running → paused → hibernated, and
// the terminal or failure states stopped, error and missing (its host went
// away).
const (
	CapsulePending    CapsuleStatus = "pending"
	CapsuleStarting   CapsuleStatus = "starting"
	CapsuleRunning    CapsuleStatus = "running"
	CapsulePaused     CapsuleStatus = "paused"
	CapsuleHibernated CapsuleStatus = "hibernated"
	CapsuleStopped    CapsuleStatus = "stopped"
	CapsuleError      CapsuleStatus = "error"
	CapsuleMissing    CapsuleStatus = "missing"
)

// IsPaused reports whether s keeps the capsule's state on disk or frozen.
func (s CapsuleStatus) IsPaused() bool { return s == CapsulePaused || s == CapsuleHibernated }

// BuildStatus is a template build's state.
type BuildStatus string

// Build states.
const (
	BuildPending   BuildStatus = "pending"
	BuildRunning   BuildStatus = "running"
	BuildSucceeded BuildStatus = "succeeded"
	BuildFailed    BuildStatus = "failed"
	BuildCancelled BuildStatus = "cancelled"
)

// ActorType says who performed an audited action.
type ActorType string

// Audit actor types.
const (
	ActorUser   ActorType = "user"
	ActorAPIKey ActorType = "api_key"
	ActorSystem ActorType = "system"
	ActorHost   ActorType = "host"
)

// AuditScope separates team activity from admin-panel activity.
type AuditScope string

// Audit scopes.
const (
	ScopeTeam  AuditScope = "team"
	ScopeAdmin AuditScope = "admin"
)

// AuditStatus is an audited action's outcome.
type AuditStatus string

// Audit outcomes.
const (
	AuditSuccess AuditStatus = "success"
	AuditFailure AuditStatus = "failure"
)

// Team is a tenant. IsBYOC teams run capsules on their own hosts.
type Team struct {
	ID         string
	Name       string
	IsBYOC     bool
	IsPlatform bool
	// CapsuleInternet is the team's default for a capsule's allow_internet
	// when the create does not say (nil = on).
	CapsuleInternet *bool
	// AllowedPrivateRanges are private CIDRs (RFC 1918, CGNAT, ULA) the
	// team's capsules may reach, set by a platform admin for BYOC teams
	// (docs/NETWORK.md); empty: none.
	AllowedPrivateRanges []string
	// DefaultIsolation is the team's default isolation of new capsules
	// when neither the create nor the template names one ("": the
	// platform's --default-isolation).
	DefaultIsolation string
	// Lifecycle is the team's default for its capsules' on_timeout and
	// auto_resume (nil fields: not set).
	Lifecycle LifecycleDefaults
	CreatedAt time.Time
	UpdatedAt time.Time
}

// Capsule life-cycle values (docs/LIFECYCLE.md).
const (
	// OnTimeoutKill destroys a capsule at the end of its timeout.
	OnTimeoutKill = "kill"
	// OnTimeoutPause pauses it to disk (with memory where its host can
	// keep it).
	OnTimeoutPause = "pause"

	// PauseReasonTimeout: paused by its on_timeout (retention deletes it
	// after the paused-retention period).
	PauseReasonTimeout = "timeout"
	// PauseReasonUser: paused explicitly (never deleted by retention).
	PauseReasonUser = "user"
	// PauseReasonShutdown: paused by wrenn up stopping (never deleted by
	// retention).
	PauseReasonShutdown = "shutdown"
)

// LifecycleDefaults are a template's or team's defaults for the capsules
// created from it / in it; nil fields are not set.
type LifecycleDefaults struct {
	OnTimeout  *string
	AutoResume *bool
}

// TeamMembership is a team as seen by one of its members.
type TeamMembership struct {
	Team Team
	Role Role
}

// Member is a user in a team.
type Member struct {
	TeamID    string
	UserID    string
	Role      Role
	Email     string // filled by ListTeamMembers
	Name      string // filled by ListTeamMembers
	CreatedAt time.Time
}

// Invite asks the owner of Email to join a team; the token is stored hashed.
type Invite struct {
	ID         string
	TeamID     string
	Email      string
	Role       Role
	TokenHash  string
	InvitedBy  string
	CreatedAt  time.Time
	ExpiresAt  time.Time
	AcceptedAt *time.Time
}

// User is a person. Email is stored lower-case. A soft-deleted user keeps
// its row (DeletedAt set, email and name replaced) so references stay valid.
type User struct {
	ID            string
	Email         string
	Name          string
	PasswordHash  string // empty for OAuth-only users
	EmailVerified bool
	IsAdmin       bool
	Status        UserStatus
	CreatedAt     time.Time
	UpdatedAt     time.Time
	DeletedAt     *time.Time
}

// UserToken is a hashed one-time or refresh token.
type UserToken struct {
	TokenHash string
	UserID    string
	Kind      TokenKind
	CreatedAt time.Time
	ExpiresAt time.Time
}

// APIKey is a team credential; only its hash and display prefix are kept.
type APIKey struct {
	ID         string
	TeamID     string
	Name       string
	Prefix     string
	Hash       string
	CreatedBy  string
	CreatedAt  time.Time
	LastUsedAt *time.Time
}

// OAuthLink connects an identity at an OAuth provider to a user.
type OAuthLink struct {
	Provider       string
	ProviderUserID string
	UserID         string
	Email          string
	CreatedAt      time.Time
}

// Host runs capsules. TeamID is set for a BYOC team's own host.
type Host struct {
	ID             string
	TeamID         string
	Address        string
	Status         HostStatus
	CredentialHash string
	VCPUs          int64
	MemoryMB       int64
	DiskMB         int64
	UsedVCPUs      int64
	UsedMemoryMB   int64
	UsedDiskMB     int64
	// CPUOvercommit, MemoryOvercommit and DiskOvercommit are the ratios the
	// host's agent admits capsules by (0: not reported, the scheduler's
	// defaults apply).
	CPUOvercommit    float64
	MemoryOvercommit float64
	DiskOvercommit   float64
	// Capabilities is the JSON object the host last reported (runtimes,
	// memory snapshots, agent start time); "{}" when it reported none.
	Capabilities    string
	LastHeartbeatAt *time.Time
	CreatedAt       time.Time
	UpdatedAt       time.Time
	// Drain is HostDrainNone (schedulable), HostDraining (no new
	// placements; its capsules are being moved off) or HostDrained.
	Drain string
	// DrainReport is the drain's progress as JSON (internal/capsules
	// DrainReport), "" before the first pass.
	DrainReport string
	// Placed lists the capsules placed on the host after its last
	// heartbeat, by any control-plane replica (so not yet in its Used
	// figures). Only ListSchedulableHosts fills it.
	Placed []Placement
}

// Placement is a capsule placed on a host and what it was given.
type Placement struct {
	CapsuleID               string
	VCPUs, MemoryMB, DiskMB int64
}

// HostToken is a hashed one-time registration token.
type HostToken struct {
	TokenHash string
	TeamID    string
	CreatedBy string
	CreatedAt time.Time
	ExpiresAt time.Time
	UsedAt    *time.Time
	HostID    string
}

// HostUsage is what a host reports in a heartbeat. DiskMB is the free
// space of the filesystem holding capsule disks.
type HostUsage struct {
	Address          string
	VCPUs            int64
	MemoryMB         int64
	DiskMB           int64
	UsedVCPUs        int64
	UsedMemoryMB     int64
	UsedDiskMB       int64
	CPUOvercommit    float64
	MemoryOvercommit float64
	DiskOvercommit   float64
	// Capabilities is a JSON object ("" keeps "{}").
	Capabilities string
}

// Template is a capsule image. Public templates (owned by the platform
// team) are visible to every team; others only to their team.
type Template struct {
	ID        string
	TeamID    string
	Name      string
	Public    bool
	SizeBytes int64
	// HostID, when set, is the only host that has the template (it was
	// built there); capsules of it are placed on that host. Empty for
	// templates every host has.
	HostID string
	// Checksum, when set, is the SHA-256 of the template's archive in the
	// shared template store: every host can fetch it, so capsules of it
	// are not pinned to HostID (which then only names the host that made
	// it). Empty for seeded templates and host-only ones.
	Checksum string
	// Memory: the template keeps its processes' memory (capsules from it
	// start with them running where the host can restore them).
	Memory bool
	// SourceCapsuleID is the capsule the template was snapshotted from
	// ("" for built and seeded templates).
	SourceCapsuleID string
	// CapsuleInternet is the template's default for a capsule's
	// allow_internet when the create does not say (nil: the team's).
	CapsuleInternet *bool
	// Isolation is the template's default isolation of capsules created
	// from it when the create names none ("": the team's default).
	Isolation string
	// Lifecycle is the template's default for its capsules' on_timeout
	// and auto_resume (nil fields: the team's).
	Lifecycle LifecycleDefaults
	CreatedAt time.Time
	UpdatedAt time.Time
}

// Build produces a template.
type Build struct {
	ID           string
	TeamID       string
	TemplateName string
	TemplateID   string
	Status       BuildStatus
	Spec         []byte // JSON
	Error        string
	CreatedBy    string
	CreatedAt    time.Time
	UpdatedAt    time.Time
	FinishedAt   *time.Time
}

// BuildLog is one record of a build's log: a chunk of a step's output
// (Stream "stdout"/"stderr") or a step boundary (Stream "system").
type BuildLog struct {
	Seq    int64
	Time   time.Time
	Step   int
	Stream string
	Data   []byte
}

// Capsule is a sandbox.
type Capsule struct {
	ID              string
	TeamID          string
	TemplateID      string
	HostID          string
	Status          CapsuleStatus
	VCPUs           int64
	MemoryMB        int64
	DiskSizeMB      int64
	TimeoutSec      int64
	ExpiresAt       *time.Time
	Env             map[string]string
	Public          bool
	AccessTokenHash string
	CreatedBy       string
	CreatedAt       time.Time
	UpdatedAt       time.Time
	PausedAt        *time.Time
	// AllowInternet lets the capsule open outbound connections to public
	// addresses (the host, other capsules and private ranges are never
	// reachable).
	AllowInternet bool
	// ErrorReason says why the capsule is in status error; empty otherwise.
	ErrorReason string
	// Metadata is the caller's string key/values, given at create.
	Metadata map[string]string
	// Network is the capsule's egress policy and rate limits (nil = the
	// defaults: everything public allowed, default rates).
	Network *CapsuleNetwork
	// Isolation is how the capsule is isolated (container, gvisor,
	// microvm), chosen at create and kept for its life; CreateCapsule
	// stores DefaultIsolation when it is empty.
	Isolation string
	// OnTimeout is what the end of the timeout does: OnTimeoutKill (also
	// for "") or OnTimeoutPause.
	OnTimeout string
	// AutoResume: any use of the paused capsule resumes it.
	AutoResume bool
	// PauseReason says why a paused capsule is paused (PauseReason*); ""
	// when it is not paused or was paused before it was recorded.
	PauseReason string
	// MoveRecord is the export record its host returned at its last pause
	// to disk (opaque): another host adopts the capsule from it. "" when
	// the capsule cannot move.
	MoveRecord string
}

// DefaultIsolation is the isolation of a capsule row that names none
// (rows from before migration 13 ran as containers).
const DefaultIsolation = "container"

// CapsuleNetwork is a capsule's egress policy as its team gave it (the
// rules are checked by internal/runtime's NetworkPolicy before they are
// stored; docs/NETWORK.md).
type CapsuleNetwork struct {
	AllowOut    []string `json:"allow_out,omitempty"`
	DenyOut     []string `json:"deny_out,omitempty"`
	EgressMBps  int      `json:"egress_mbps,omitempty"`
	IngressMBps int      `json:"ingress_mbps,omitempty"`
	BurstMB     int      `json:"burst_mb,omitempty"`
}

// IsZero reports whether n sets nothing (the defaults).
func (n *CapsuleNetwork) IsZero() bool {
	return n == nil || len(n.AllowOut)+len(n.DenyOut) == 0 && n.EgressMBps == 0 && n.IngressMBps == 0 && n.BurstMB == 0
}

// AuditLog is one audited action. Metadata is a JSON object.
type AuditLog struct {
	ID           int64
	TeamID       string
	ActorType    ActorType
	ActorID      string
	ActorName    string
	ResourceType string
	ResourceID   string
	Action       string
	Status       AuditStatus
	Scope        AuditScope
	Metadata     []byte
	CreatedAt    time.Time
}

// AuditFilter selects audit entries; empty fields match everything.
// TeamID empty means every team (admin use only).
type AuditFilter struct {
	TeamID       string
	Scope        AuditScope
	ActorID      string
	ResourceType string
	Action       string
	From, To     time.Time // [From, To); zero means unbounded
	Cursor       string    // from a previous page; empty for the first
	Limit        int       // 1..1000, default 50
}

// MetricSnapshot is a capsule's resource use over IntervalMS ending at TS.
type MetricSnapshot struct {
	ID         int64
	CapsuleID  string
	TeamID     string
	TS         time.Time
	IntervalMS int64
	CPUCores   float64
	MemBytes   int64
}

// UsageSum is one team's consumption over a time range.
type UsageSum struct {
	TeamID       string
	CPUMinutes   float64
	RAMMBMinutes float64
}

// DailyUsage is one team's consumption on one UTC day (Day at 00:00 UTC).
type DailyUsage struct {
	TeamID       string
	Day          time.Time
	CPUMinutes   float64
	RAMMBMinutes float64
	UpdatedAt    time.Time
}

// CapsuleFilter pages through capsules, newest first.
type CapsuleFilter struct {
	Status CapsuleStatus // empty: all
	// Metadata keeps capsules whose metadata has every key with the
	// given value. Pages are cut before this filter: a page may hold
	// fewer than Limit capsules and still have a next cursor.
	Metadata map[string]string
	Cursor   string
	Limit    int // 1..1000, default 100
}

// UserFilter searches users by email or name substring.
type UserFilter struct {
	Search string
	Limit  int // 1..1000, default 100
	Offset int
}

// Store is the control plane's persistence. All methods are safe for
// concurrent use; every method that reads or changes team data takes the
// team ID.
type Store interface {
	Ping(ctx context.Context) error
	Close() error
	// Events, webhooks and their outbox (events.go).
	EventStore
	// Volumes and their mounts (volumes.go).
	VolumeStore

	// Teams.
	CreateTeam(ctx context.Context, t Team) (Team, error)
	GetTeam(ctx context.Context, id string) (Team, error)
	GetPlatformTeam(ctx context.Context) (Team, error)
	ListTeams(ctx context.Context) ([]Team, error)
	ListTeamsForUser(ctx context.Context, userID string) ([]TeamMembership, error)
	RenameTeam(ctx context.Context, id, name string) error
	SetTeamBYOC(ctx context.Context, id string, byoc bool) error
	// SetTeamCapsuleInternet sets (nil: clears) the team's default for
	// allow_internet.
	SetTeamCapsuleInternet(ctx context.Context, id string, v *bool) error
	// SetTeamPrivateRanges replaces the private CIDRs the team's capsules
	// may reach (nil or empty: none).
	SetTeamPrivateRanges(ctx context.Context, id string, ranges []string) error
	// SetTeamDefaultIsolation sets ("" clears) the team's default
	// isolation of new capsules; the caller validates the name.
	SetTeamDefaultIsolation(ctx context.Context, id, isolation string) error
	// SetTemplateIsolation sets ("" clears) the default isolation of
	// capsules created from the team's template id.
	SetTemplateIsolation(ctx context.Context, teamID, id, isolation string) error
	// SetTemplateCapsuleInternet sets (nil: clears) the default
	// allow_internet of the team's template id.
	SetTemplateCapsuleInternet(ctx context.Context, teamID, id string, v *bool) error
	// DeleteTeam removes the team and, by cascade, its members, invites,
	// keys, templates, builds, capsules and BYOC hosts. The platform team
	// cannot be deleted (ErrConflict).
	DeleteTeam(ctx context.Context, id string) error

	// Members and invites.
	AddTeamMember(ctx context.Context, teamID, userID string, role Role) (Member, error)
	GetTeamMember(ctx context.Context, teamID, userID string) (Member, error)
	ListTeamMembers(ctx context.Context, teamID string) ([]Member, error)
	UpdateTeamMemberRole(ctx context.Context, teamID, userID string, role Role) error
	RemoveTeamMember(ctx context.Context, teamID, userID string) error
	CreateInvite(ctx context.Context, inv Invite) (Invite, error)
	ListInvites(ctx context.Context, teamID string) ([]Invite, error)
	ListInvitesForEmail(ctx context.Context, email string) ([]Invite, error)
	GetInviteByTokenHash(ctx context.Context, tokenHash string) (Invite, error)
	// AcceptInvite marks an open, unexpired invite accepted and adds the
	// user to its team with its role, atomically. ErrConflict when the
	// invite was already accepted or expired.
	AcceptInvite(ctx context.Context, inviteID, userID string) (Member, error)
	DeleteInvite(ctx context.Context, teamID, inviteID string) error

	// Users.
	CreateUser(ctx context.Context, u User) (User, error)
	GetUser(ctx context.Context, id string) (User, error)
	GetUserByEmail(ctx context.Context, email string) (User, error)
	ListUsers(ctx context.Context, f UserFilter) ([]User, error)
	SetUserName(ctx context.Context, id, name string) error
	SetUserPassword(ctx context.Context, id, passwordHash string) error
	SetUserEmailVerified(ctx context.Context, id string, verified bool) error
	// SetUserActive activates or deactivates a user. Deactivating the last
	// active admin fails with ErrLastAdmin.
	SetUserActive(ctx context.Context, id string, active bool) error
	// SoftDeleteUser marks the user deleted, scrubs its email, name and
	// password, removes its memberships, OAuth links and tokens, and
	// anonymises its audit entries, in one transaction. Deleting the last
	// active admin fails with ErrLastAdmin.
	SoftDeleteUser(ctx context.Context, id string) error
	// GrantUserAdmin makes a user a platform admin; granting again is a
	// no-op (changed=false).
	GrantUserAdmin(ctx context.Context, id string) (changed bool, err error)
	// RevokeUserAdmin removes platform admin in one atomic conditional
	// statement that never removes the last active admin (ErrLastAdmin).
	// Revoking a non-admin is a no-op (changed=false).
	RevokeUserAdmin(ctx context.Context, id string) (changed bool, err error)
	CountActiveAdmins(ctx context.Context) (int64, error)

	// User tokens (refresh sessions, email verification, password reset).
	CreateUserToken(ctx context.Context, tok UserToken) error
	// ConsumeUserToken deletes and returns an unexpired token of that kind,
	// so a token works once.
	ConsumeUserToken(ctx context.Context, tokenHash string, kind TokenKind) (UserToken, error)
	DeleteUserTokens(ctx context.Context, userID string, kind TokenKind) error

	// API keys.
	CreateAPIKey(ctx context.Context, k APIKey) (APIKey, error)
	ListAPIKeys(ctx context.Context, teamID string) ([]APIKey, error)
	DeleteAPIKey(ctx context.Context, teamID, id string) error
	// LookupAPIKey finds a key by hash and records its use (at most one
	// write per key per minute).
	LookupAPIKey(ctx context.Context, hash string) (APIKey, error)

	// OAuth.
	LinkOAuth(ctx context.Context, l OAuthLink) (OAuthLink, error)
	GetOAuthLink(ctx context.Context, provider, providerUserID string) (OAuthLink, error)
	ListOAuthLinks(ctx context.Context, userID string) ([]OAuthLink, error)
	UnlinkOAuth(ctx context.Context, userID, provider string) error

	// Hosts.
	CreateHostToken(ctx context.Context, tok HostToken) error
	// RegisterHost consumes an unused, unexpired registration token and
	// creates the host (online, heartbeat now), atomically. The host gets
	// the token's team (BYOC) if it has one.
	RegisterHost(ctx context.Context, tokenHash string, h Host) (Host, error)
	GetHost(ctx context.Context, id string) (Host, error)
	GetHostByCredentialHash(ctx context.Context, hash string) (Host, error)
	ListHosts(ctx context.Context) ([]Host, error)
	// ListSchedulableHosts returns online hosts a team may use: the team's
	// own hosts when byoc, else the shared hosts.
	ListSchedulableHosts(ctx context.Context, teamID string, byoc bool) ([]Host, error)
	// HostHeartbeat records usage, sets the heartbeat time and brings an
	// unavailable host back online.
	HostHeartbeat(ctx context.Context, id string, u HostUsage) (Host, error)
	// MarkStaleHostsUnavailable marks hosts whose last heartbeat is older
	// than staleBefore unavailable and returns their IDs.
	MarkStaleHostsUnavailable(ctx context.Context, staleBefore time.Time) ([]string, error)
	// SetHostCapabilities records the overcommit ratios and capabilities
	// (only those fields of u) a host's agent reports outside a heartbeat
	// (GetHostInfo); it does not count as a heartbeat.
	SetHostCapabilities(ctx context.Context, id string, u HostUsage) error
	SetHostStatus(ctx context.Context, id string, s HostStatus) error
	// SetHostDrain records a host's drain state and progress report.
	SetHostDrain(ctx context.Context, id, drain, report string) error
	DeleteHost(ctx context.Context, id string) error

	// Templates. Get/List see the team's own and public templates; Update
	// and Delete only the team's own.
	CreateTemplate(ctx context.Context, t Template) (Template, error)
	GetTemplate(ctx context.Context, teamID, id string) (Template, error)
	// GetTemplateByName prefers the team's own template over a public one.
	GetTemplateByName(ctx context.Context, teamID, name string) (Template, error)
	ListTemplates(ctx context.Context, teamID string) ([]Template, error)
	AdminListTemplates(ctx context.Context) ([]Template, error)
	SetTemplateSize(ctx context.Context, teamID, id string, sizeBytes int64) error
	DeleteTemplate(ctx context.Context, teamID, id string) error

	// Builds.
	CreateBuild(ctx context.Context, b Build) (Build, error)
	GetBuild(ctx context.Context, teamID, id string) (Build, error)
	ListBuilds(ctx context.Context, teamID string) ([]Build, error)
	AdminListBuilds(ctx context.Context) ([]Build, error)
	// UpdateBuildStatus moves a build from one of from to to (recording
	// errMsg, templateID when not empty, finished time for terminal states)
	// and reports whether it applied.
	UpdateBuildStatus(ctx context.Context, teamID, id string, from []BuildStatus, to BuildStatus, errMsg, templateID string) (bool, error)
	// TouchBuild moves a running build's updated_at to now (the runner
	// executing it says it is alive); false when the build is not running.
	TouchBuild(ctx context.Context, teamID, id string) (bool, error)
	// AppendBuildLogs stores a build's log records (their Seq set by the
	// caller, increasing); ListBuildLogs returns up to limit records with
	// Seq > afterSeq in order; TrimBuildLogs deletes those with Seq <
	// beforeSeq. Callers check the build's team first.
	AppendBuildLogs(ctx context.Context, buildID string, recs []BuildLog) error
	ListBuildLogs(ctx context.Context, buildID string, afterSeq int64, limit int) ([]BuildLog, error)
	TrimBuildLogs(ctx context.Context, buildID string, beforeSeq int64) error

	// Leases (background jobs run by one control-plane replica at a
	// time). TryLease takes the named lease for holder until expiresAt
	// when it is free, expired (before now) or already holder's, and
	// reports whether holder has it; ReleaseLease gives it up if holder
	// holds it.
	TryLease(ctx context.Context, name, holder string, now, expiresAt time.Time) (bool, error)
	ReleaseLease(ctx context.Context, name, holder string) error

	// Capsules.
	CreateCapsule(ctx context.Context, c Capsule) (Capsule, error)
	GetCapsule(ctx context.Context, teamID, id string) (Capsule, error)
	// GetCapsuleUnscoped is for the port proxy, reconciler and admin only.
	GetCapsuleUnscoped(ctx context.Context, id string) (Capsule, error)
	// ListCapsules pages through a team's capsules, newest first; the
	// returned cursor is empty on the last page.
	ListCapsules(ctx context.Context, teamID string, f CapsuleFilter) ([]Capsule, string, error)
	AdminListCapsules(ctx context.Context, f CapsuleFilter) ([]Capsule, string, error)
	ListCapsulesByHost(ctx context.Context, hostID string) ([]Capsule, error)
	// ListExpiredCapsules returns live capsules whose expiry is at or before
	// now, oldest expiry first.
	ListExpiredCapsules(ctx context.Context, now time.Time, limit int) ([]Capsule, error)
	CountCapsulesByStatus(ctx context.Context) (map[CapsuleStatus]int64, error)
	// UpdateCapsuleStatus moves a capsule from `from` to `to` in one
	// conditional statement and reports whether it applied (false when the
	// capsule is in another state or is not the team's). Entering a paused
	// state records PausedAt; leaving paused states clears it.
	UpdateCapsuleStatus(ctx context.Context, teamID, id string, from, to CapsuleStatus) (bool, error)
	// FailCapsule moves a capsule from `from` to error with a reason, in
	// one conditional statement (UpdateCapsuleStatus to any other state
	// clears the reason).
	FailCapsule(ctx context.Context, teamID, id string, from CapsuleStatus, reason string) (bool, error)
	SetCapsuleHost(ctx context.Context, teamID, id, hostID string) error
	// SetCapsuleMoveRecord records the export record of a capsule's last
	// pause to disk ("" clears it).
	SetCapsuleMoveRecord(ctx context.Context, teamID, id, record string) error
	// MoveCapsuleHost re-homes a capsule from fromHost to toHost if it is
	// still on fromHost in status, and reports whether it applied.
	MoveCapsuleHost(ctx context.Context, teamID, id, fromHost, toHost string, status CapsuleStatus) (bool, error)
	// SetCapsuleTimeout sets the TTL and the expiry (nil: never expires).
	SetCapsuleTimeout(ctx context.Context, teamID, id string, timeoutSec int64, expiresAt *time.Time) error
	SetCapsulePublic(ctx context.Context, teamID, id string, public bool) error
	// SetCapsuleNetwork records the capsule's internet switch and egress
	// policy (nil: the defaults).
	SetCapsuleNetwork(ctx context.Context, teamID, id string, allowInternet bool, n *CapsuleNetwork) error
	DeleteCapsule(ctx context.Context, teamID, id string) error
	// SetCapsuleLifecycle records a capsule's on_timeout and auto_resume.
	SetCapsuleLifecycle(ctx context.Context, teamID, id, onTimeout string, autoResume bool) error
	// SetCapsulePauseReason records why a capsule is paused ("" clears).
	SetCapsulePauseReason(ctx context.Context, teamID, id, reason string) error
	// ListTimedOutPausable returns running capsules with on_timeout pause
	// whose expiry is at or before now, oldest expiry first.
	ListTimedOutPausable(ctx context.Context, now time.Time, limit int) ([]Capsule, error)
	// ListRetentionExpired returns capsules paused by their timeout
	// (PauseReasonTimeout) at or before `before`, oldest first.
	ListRetentionExpired(ctx context.Context, before time.Time, limit int) ([]Capsule, error)
	// SetTemplateLifecycle and SetTeamLifecycle record the defaults of a
	// template / team for its capsules' on_timeout and auto_resume.
	SetTemplateLifecycle(ctx context.Context, teamID, id string, d LifecycleDefaults) error
	SetTeamLifecycle(ctx context.Context, id string, d LifecycleDefaults) error

	// Audit log.
	InsertAuditLog(ctx context.Context, e AuditLog) (AuditLog, error)
	// ListAuditLogs pages newest first by (created_at, id); the cursor is
	// stable under concurrent inserts. next is empty on the last page.
	ListAuditLogs(ctx context.Context, f AuditFilter) (entries []AuditLog, next string, err error)
	AnonymizeUserAuditLogs(ctx context.Context, userID string) (int64, error)

	// Usage metering.
	InsertMetricSnapshots(ctx context.Context, snaps []MetricSnapshot) error
	ListCapsuleMetricSnapshots(ctx context.Context, teamID, capsuleID string, from, to time.Time) ([]MetricSnapshot, error)
	ListTeamMetricSnapshots(ctx context.Context, teamID string, from, to time.Time) ([]MetricSnapshot, error)
	ListTeamsWithMetricSnapshots(ctx context.Context, from, to time.Time) ([]string, error)
	DeleteMetricSnapshotsBefore(ctx context.Context, before time.Time) (int64, error)
	// SumUsage aggregates snapshots in [from, to) per team (teamID empty:
	// every team): CPU minutes = Σ cpu_cores × interval, RAM MB-minutes =
	// Σ mem MiB × interval. The rollup worker stores completed days with
	// UpsertDailyUsage; today's figures come from here live.
	SumUsage(ctx context.Context, teamID string, from, to time.Time) ([]UsageSum, error)
	// UpsertDailyUsage writes rows keyed by (team, day); writing the same
	// rows again changes nothing.
	UpsertDailyUsage(ctx context.Context, rows []DailyUsage) error
	// ListDailyUsage returns a team's days in [from, to] (dates, inclusive).
	ListDailyUsage(ctx context.Context, teamID string, from, to time.Time) ([]DailyUsage, error)
}

// ID prefixes.
const (
	PrefixCapsule  = "cl"
	PrefixTeam     = "team"
	PrefixUser     = "usr"
	PrefixAPIKey   = "key"
	PrefixHost     = "host"
	PrefixTemplate = "tpl"
	PrefixBuild    = "bld"
	PrefixInvite   = "inv"
)

var idEncoding = base32.NewEncoding("0123456789abcdefghjkmnpqrstvwxyz").WithPadding(base32.NoPadding)

// NewID returns prefix + "-" + 16 random lower-case base32 characters
// (80 bits), e.g. "cl-3k9x…".
func NewID(prefix string) string {
	var b [10]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return prefix + "-" + idEncoding.EncodeToString(b[:])
}

// IsID reports whether s has exactly the shape NewID(prefix) gives.
func IsID(prefix, s string) bool {
	rest, ok := strings.CutPrefix(s, prefix+"-")
	if !ok || len(rest) != idEncoding.EncodedLen(10) {
		return false
	}
	_, err := idEncoding.DecodeString(rest)
	return err == nil
}

// Now returns the current time as the store keeps it: UTC, microseconds.
func Now() time.Time { return Truncate(time.Now()) }

// Truncate normalises t to the store's precision (UTC, microseconds).
func Truncate(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

// NormalizeEmail lower-cases and trims an email address.
func NormalizeEmail(email string) string { return strings.ToLower(strings.TrimSpace(email)) }

// Day returns t's UTC calendar day at 00:00 UTC.
func Day(t time.Time) time.Time {
	y, m, d := t.UTC().Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}

// Cursor is a keyset position: the (created_at, id) of the last row of a
// page. Rows strictly after it in (created_at DESC, id DESC) order follow.
type Cursor struct {
	Time  time.Time
	IntID int64  // for integer-keyed tables (audit log)
	StrID string // for text-keyed tables (capsules)
}

// EncodeCursor returns an opaque, URL-safe cursor.
func EncodeCursor(c Cursor) string {
	b := binary.BigEndian.AppendUint64(nil, uint64(c.Time.UnixMicro()))
	b = binary.BigEndian.AppendUint64(b, uint64(c.IntID))
	b = append(b, c.StrID...)
	return base64.RawURLEncoding.EncodeToString(b)
}

// DecodeCursor parses a cursor from EncodeCursor. The empty string decodes
// to the start position (after everything).
func DecodeCursor(s string) (Cursor, error) {
	if s == "" {
		// MaxTime is after every row, so the id part never decides.
		return Cursor{Time: MaxTime, IntID: 1<<63 - 1}, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) < 16 || len(b) > 16+256 {
		return Cursor{}, fmt.Errorf("%w: %q", ErrInvalidCursor, s)
	}
	return Cursor{
		Time:  time.UnixMicro(int64(binary.BigEndian.Uint64(b[:8]))).UTC(),
		IntID: int64(binary.BigEndian.Uint64(b[8:16])),
		StrID: string(b[16:]),
	}, nil
}

// Time bounds used for open-ended ranges; both fit PostgreSQL timestamptz
// and int64 microseconds.
var (
	MinTime = time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC)
	MaxTime = time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)
)

// ClampLimit returns n bounded to [1, max], or def when n <= 0.
func ClampLimit(n, def, maxN int) int {
	switch {
	case n <= 0:
		return def
	case n > maxN:
		return maxN
	}
	return n
}

// FilterMetadata keeps the capsules whose metadata holds every key of md
// with its value (all of them when md is empty), in place.
func FilterMetadata(caps []Capsule, md map[string]string) []Capsule {
	if len(md) == 0 {
		return caps
	}
	out := caps[:0]
	for _, c := range caps {
		ok := true
		for k, v := range md {
			if got, has := c.Metadata[k]; !has || got != v {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, c)
		}
	}
	return out
}
