package wrenn_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"strings"
	"time"

	wrenn "github.com/wrenn-dev/wrenn/sdk"
)

// A capsule's life: create it, run a command, remove it.
func Example() {
	ctx := context.Background()
	c, err := wrenn.New(os.Getenv("WRENN_URL"), os.Getenv("WRENN_API_KEY"))
	if err != nil {
		log.Fatal(err)
	}
	capsule, err := c.Create(ctx, wrenn.CreateParams{Template: "minimal", Timeout: 5 * time.Minute})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Kill(ctx, capsule.ID) //nolint:errcheck // example

	res, err := c.Exec(ctx, capsule.ID, wrenn.ExecRequest{Cmd: "echo", Args: []string{"hello"}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(res.Stdout)
	fmt.Println("exit code", res.ExitCode)
	// Output:
	// hello
	// exit code 0
}

// Stream a command's output as it is produced.
func ExampleClient_ExecStream() {
	ctx := context.Background()
	c, _ := wrenn.New(os.Getenv("WRENN_URL"), os.Getenv("WRENN_API_KEY"))
	capsule, err := c.Create(ctx, wrenn.CreateParams{Template: "minimal"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Kill(ctx, capsule.ID) //nolint:errcheck // example

	st, err := c.ExecStream(ctx, capsule.ID, wrenn.ExecRequest{
		Cmd: "sh", Args: []string{"-c", "for i in 1 2 3; do echo line $i; done; exit 3"},
	}, os.Stdout, os.Stderr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("exit code", st.ExitCode)
	// Output:
	// line 1
	// line 2
	// line 3
	// exit code 3
}

// Copy data into a capsule and back, streamed.
func ExampleFilesService_Write() {
	ctx := context.Background()
	c, _ := wrenn.New(os.Getenv("WRENN_URL"), os.Getenv("WRENN_API_KEY"))
	capsule, err := c.Create(ctx, wrenn.CreateParams{Template: "minimal"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Kill(ctx, capsule.ID) //nolint:errcheck // example

	if _, err := c.Files.Write(ctx, capsule.ID, "/tmp/in/greeting.txt", strings.NewReader("hi there\n")); err != nil {
		log.Fatal(err)
	}
	res, err := c.Exec(ctx, capsule.ID, wrenn.ExecRequest{Cmd: "sh", Args: []string{"-c", "tr a-z A-Z < /tmp/in/greeting.txt > /tmp/out.txt"}})
	if err != nil || res.ExitCode != 0 {
		log.Fatal(err, res)
	}
	var buf bytes.Buffer
	if _, err := c.Files.Read(ctx, capsule.ID, "/tmp/out.txt", &buf); err != nil {
		log.Fatal(err)
	}
	fmt.Print(buf.String())
	// Output:
	// HI THERE
}

// Pause a capsule and resume it later; its processes and files survive.
func ExampleClient_Pause() {
	ctx := context.Background()
	c, _ := wrenn.New(os.Getenv("WRENN_URL"), os.Getenv("WRENN_API_KEY"))
	capsule, err := c.Create(ctx, wrenn.CreateParams{Template: "minimal"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Kill(ctx, capsule.ID) //nolint:errcheck // example

	paused, err := c.Pause(ctx, capsule.ID, wrenn.PauseOptions{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(paused.Status)
	resumed, err := c.Resume(ctx, capsule.ID, 0)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(resumed.Status)
	// Output:
	// paused
	// running
}

// API errors carry the API's code and message.
func ExampleError() {
	ctx := context.Background()
	c, _ := wrenn.New(os.Getenv("WRENN_URL"), os.Getenv("WRENN_API_KEY"))
	_, err := c.Get(ctx, "cl-doesnotexist")
	var apiErr *wrenn.Error
	if errors.As(err, &apiErr) {
		fmt.Println(apiErr.StatusCode, apiErr.Code)
	}
	fmt.Println(wrenn.IsNotFound(err))
	// Output:
	// 404 not_found
	// true
}

// An interactive terminal: what a terminal UI would wire to its screen
// and keyboard.
func ExampleClient_OpenPTY() {
	ctx := context.Background()
	c, _ := wrenn.New(os.Getenv("WRENN_URL"), os.Getenv("WRENN_API_KEY"))
	capsule, err := c.Create(ctx, wrenn.CreateParams{Template: "minimal"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Kill(ctx, capsule.ID) //nolint:errcheck // example

	pty, err := c.OpenPTY(ctx, capsule.ID, wrenn.PTYOptions{Cols: 120, Rows: 40})
	if err != nil {
		log.Fatal(err)
	}
	defer pty.Close()
	go func() {
		_, _ = io.WriteString(pty, "uname -s; exit\n")
	}()
	_, _ = io.Copy(os.Stdout, pty) // until the shell exits
	if st := pty.ExitStatus(); st != nil {
		fmt.Println("\nshell exited with", st.ExitCode)
	}
}
