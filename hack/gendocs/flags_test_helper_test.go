package main

import (
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func flagsOf(cmd *cobra.Command) []string {
	var names []string
	cmd.Flags().VisitAll(func(f *pflag.Flag) { names = append(names, f.Name) })
	for _, sub := range cmd.Commands() {
		if sub.IsAvailableCommand() {
			sub.LocalFlags().VisitAll(func(f *pflag.Flag) {
				if f.Name != "help" {
					names = append(names, f.Name)
				}
			})
		}
	}
	return names
}
