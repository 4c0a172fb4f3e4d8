package sqlite

import (
	"testing"

	"github.com/wrenn-dev/wrenn/internal/store/storetest"
)

func TestMigrationFiles(t *testing.T) { storetest.CheckMigrationFiles(t, migrations, "migrations") }
