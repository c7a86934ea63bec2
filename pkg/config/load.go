package config

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Error is one bad configuration value. Its message names the key, where
// the value came from and what to change. Load joins several of them with
// errors.Join; find one with errors.As to map it to exit code 2.
type Error struct {
	Key     string // configuration key, such as "lease-ttl"
	Source  string // "file F line N", "env BARNACLE_X", "flag --x", or "" for a missing key
	Problem string
}

func (e *Error) Error() string {
	if e.Source == "" {
		return fmt.Sprintf("%s: %s", e.Key, e.Problem)
	}
	return fmt.Sprintf("%s (%s): %s", e.Key, e.Source, e.Problem)
}

// IsConfigError reports whether err holds at least one *Error, so that the
// CLI can exit with code 2.
func IsConfigError(err error) bool {
	var ce *Error
	return errors.As(err, &ce)
}

// Sources are the layers that Load reads after the defaults.
type Sources struct {
	// File is the YAML file named by --config, or "".
	File string
	// Env looks up an environment variable; nil means os.LookupEnv.
	Env func(string) (string, bool)
	// Flags holds the flags the user set explicitly, by key name. Flags left
	// at their defaults must not be in it, or they would override the file.
	Flags map[string]string
}

// Needs says what a command requires of the configuration beyond valid
// values.
type Needs struct {
	Keys  []string // keys that must be set
	Agent bool     // the agent's rules: follow-master needs keeper-uid
}

// Load builds the configuration: defaults, then the YAML file, then the
// BARNACLE_* environment, then explicit flags. It checks every value and
// what needs asks for, and returns all problems at once joined with
// errors.Join.
func Load(src Sources, needs Needs) (Config, error) {
	c := Default()
	var errs []error
	if src.File != "" {
		errs = append(errs, loadFile(&c, src.File)...)
	}
	env := src.Env
	if env == nil {
		env = os.LookupEnv
	}
	for _, k := range keys {
		name := EnvName(k.name)
		if v, ok := env(name); ok {
			errs = append(errs, apply(&c, k, v, "env "+name))
		}
	}
	for name, v := range src.Flags {
		k, ok := lookupKey(name)
		if !ok {
			errs = append(errs, &Error{Key: name, Source: "flag --" + name, Problem: "unknown flag"})
			continue
		}
		errs = append(errs, apply(&c, k, v, "flag --"+name))
	}
	// A key whose value was refused is unset now; saying it is also
	// "required" would contradict the error just given for it.
	refused := map[string]bool{}
	for _, err := range errs {
		var ce *Error
		if errors.As(err, &ce) {
			refused[ce.Key] = true
		}
	}
	errs = append(errs, c.validate(needs, refused)...)
	if err := errors.Join(errs...); err != nil {
		return Config{}, err
	}
	return c, nil
}

func apply(c *Config, k key, v, source string) error {
	if err := k.set(c, v); err != nil {
		return &Error{Key: k.name, Source: source, Problem: err.Error()}
	}
	c.Sources[k.name] = source
	return nil
}

func loadFile(c *Config, path string) []error {
	data, err := os.ReadFile(path)
	if err != nil {
		return []error{&Error{Key: "config", Source: "flag --config", Problem: fmt.Sprintf("cannot read the config file: %v", err)}}
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return []error{&Error{Key: "config", Source: "file " + path, Problem: fmt.Sprintf("not valid YAML: %v", err)}}
	}
	if len(doc.Content) == 0 { // an empty file sets nothing
		return nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return []error{&Error{Key: "config", Source: "file " + path, Problem: "the top level must be a mapping of key: value"}}
	}
	var errs []error
	seen := map[string]int{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		kn, vn := root.Content[i], root.Content[i+1]
		source := fmt.Sprintf("file %s line %d", path, kn.Line)
		k, ok := lookupKey(kn.Value)
		if !ok {
			errs = append(errs, &Error{Key: kn.Value, Source: source, Problem: unknownKeyHint(kn.Value)})
			continue
		}
		if prev, dup := seen[kn.Value]; dup {
			errs = append(errs, &Error{Key: kn.Value, Source: source, Problem: fmt.Sprintf("set twice (first on line %d); keep one", prev)})
			continue
		}
		seen[kn.Value] = kn.Line
		v, err := scalarOrList(vn)
		if err != nil {
			errs = append(errs, &Error{Key: k.name, Source: source, Problem: err.Error()})
			continue
		}
		errs = append(errs, apply(c, k, v, source))
	}
	return errs
}

// scalarOrList turns a YAML value into the string form that the environment
// and flags use: a scalar as it is, a list of scalars joined with commas.
func scalarOrList(n *yaml.Node) (string, error) {
	switch n.Kind {
	case yaml.ScalarNode:
		return n.Value, nil
	case yaml.SequenceNode:
		var parts []string
		for _, item := range n.Content {
			if item.Kind != yaml.ScalarNode {
				return "", fmt.Errorf("list items must be plain values")
			}
			parts = append(parts, item.Value)
		}
		return strings.Join(parts, ","), nil
	default:
		return "", fmt.Errorf("must be a value or a list of values, not a mapping")
	}
}

// unknownKeyHint names the closest known key, since most unknown keys are
// typos or snake_case spellings of real ones.
func unknownKeyHint(name string) string {
	norm := strings.ReplaceAll(strings.ToLower(name), "_", "-")
	if _, ok := lookupKey(norm); ok {
		return fmt.Sprintf("unknown key; did you mean %q? (keys are kebab-case)", norm)
	}
	best, bestDist := "", 4
	for _, k := range keys {
		if d := EditDistance(norm, k.name); d < bestDist {
			best, bestDist = k.name, d
		}
	}
	if best != "" {
		return fmt.Sprintf("unknown key; did you mean %q?", best)
	}
	return "unknown key; run 'barnacle --help' for the list of keys"
}

// EditDistance is the Levenshtein distance between a and b, for the
// did-you-mean hints of unknown keys here and of unknown flags in the CLI.
func EditDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

var hostnameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9_.-]*[a-z0-9])?$`)

// validate checks what single values cannot: required keys and the rules
// between keys. A required key in refused already has its error.
func (c *Config) validate(needs Needs, refused map[string]bool) []error {
	var errs []error
	for _, name := range needs.Keys {
		k, ok := lookupKey(name)
		if !ok {
			panic("config: required key " + name + " is not a key")
		}
		if k.get(c) == "" && !refused[name] {
			errs = append(errs, &Error{Key: name, Problem: fmt.Sprintf("required; set %q in the config file, %s, or --%s", name, EnvName(name), name)})
		}
	}
	if c.LeaseTTL != 0 && c.LeaseTTL < 2*time.Second {
		errs = append(errs, &Error{Key: "lease-ttl", Source: c.Sources["lease-ttl"], Problem: fmt.Sprintf("%s is too short; etcd leases need at least 2s (10s is the default)", c.LeaseTTL)})
	}
	if needs.Agent && c.LeaderPolicy == PolicyFollowMaster && c.KeeperUID == "" {
		errs = append(errs, &Error{Key: "keeper-uid", Problem: "required with leader-policy follow-master: set it to the --uid of the Stolon keeper beside this agent, or use leader-policy any on a dedicated backup host"})
	}
	if needs.Agent && c.KeeperUID == KeeperUIDAuto && c.NodeName == "" {
		errs = append(errs, &Error{Key: "node-name", Problem: "required with keeper-uid auto: set BARNACLE_NODE_NAME from the downward API (fieldRef spec.nodeName)"})
	}
	if c.KeeperUID == KeeperUIDAuto && c.KeeperPodSelector == "" {
		errs = append(errs, &Error{Key: "keeper-pod-selector", Source: c.Sources["keeper-pod-selector"], Problem: "required with keeper-uid auto: the labels of the keeper pods, such as component=stolon-keeper"})
	}
	if c.SlotMode == SlotModeStolon && strings.HasPrefix(c.SlotName, StolonSlotPrefix) {
		errs = append(errs, &Error{Key: "slot-name", Source: c.Sources["slot-name"], Problem: fmt.Sprintf(
			"%q starts with stolon_; with slot-mode stolon give the name as listed in additionalMasterReplicationSlots, without the prefix", c.SlotName)})
	}
	if c.SlotMode == SlotModeOwn && strings.HasPrefix(c.SlotName, StolonSlotPrefix) {
		errs = append(errs, &Error{Key: "slot-name", Source: c.Sources["slot-name"], Problem: fmt.Sprintf(
			"%q starts with stolon_, and Stolon's keeper drops every stolon_ slot it does not manage; pick another name or use slot-mode stolon", c.SlotName)})
	}
	if c.MinimumRedundancy > 0 && c.RetentionPolicy.Redundancy > 0 && c.MinimumRedundancy > c.RetentionPolicy.Redundancy {
		errs = append(errs, &Error{Key: "minimum-redundancy", Source: c.Sources["minimum-redundancy"], Problem: fmt.Sprintf(
			"%d is more than the %d backups retention-policy %q keeps; lower it or raise the policy", c.MinimumRedundancy, c.RetentionPolicy.Redundancy, c.RetentionPolicy.String())})
	}
	if c.RequestRetention < 0 {
		errs = append(errs, &Error{Key: "request-retention", Source: c.Sources["request-retention"], Problem: "must not be negative (0 keeps finished requests forever)"})
	}
	if c.LeaderTakeoverDelay < 0 {
		errs = append(errs, &Error{Key: "leader-takeover-delay", Source: c.Sources["leader-takeover-delay"], Problem: "must not be negative"})
	}
	if c.AgentName != "" && !hostnameRE.MatchString(c.AgentName) {
		errs = append(errs, &Error{Key: "agent-name", Source: c.Sources["agent-name"], Problem: fmt.Sprintf("invalid name %q: use lower-case letters, digits, '_', '.', '-'", c.AgentName)})
	}
	if (c.StoreCertFile == "") != (c.StoreKeyFile == "") {
		errs = append(errs, &Error{Key: "store-cert-file", Source: c.Sources["store-cert-file"], Problem: "store-cert-file and store-key go together; set both or neither"})
	}
	if c.StorePasswordFile != "" && c.StoreUsername == "" {
		errs = append(errs, &Error{Key: "store-username", Problem: "store-password-file is set; set store-username too"})
	}
	for _, f := range []string{"store-cert-file", "store-key", "store-ca-file", "store-password-file", "pg-password-file"} {
		k, _ := lookupKey(f)
		path := k.get(c)
		if path == "" {
			continue
		}
		if _, err := os.Stat(path); err != nil {
			errs = append(errs, &Error{Key: f, Source: c.Sources[f], Problem: fmt.Sprintf("cannot read %s: %v", path, errors.Unwrap(err))})
		}
	}
	return errs
}
